package l7

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// h1response is the http.ResponseWriter of one request on an HTTP/1.x connection. A small
// response is held back until the handler returns and then goes out in one write with its
// Content-Length; a larger or flushed one is chunked (HTTP/1.1) or delimited by closing
// the connection (HTTP/1.0). Like net/http's, it is for the handler's goroutine only
// (reading the body from another goroutine is fine).
type h1response struct {
	c      *h1conn
	req    *http.Request
	header http.Header
	body   h1body

	status      int
	wroteHeader bool // the final status is set
	headerSent  bool // the status line and header fields are in the connection's writer
	isHEAD      bool
	chunked     bool
	closeAfter  bool
	werr        bool  // a write to the connection failed
	declared    int64 // Content-Length set by the handler, -1 if none
	written     int64
	buf         []byte // body bytes held back before headerSent
	trailers    []string
	vals        [][]string // scratch: the values of the fields in c.keys, while writing the head
	own         [2]string  // the values of the Content-Length and Content-Type sendHeader adds

	contMu      sync.Mutex
	canContinue bool // a 100 Continue may still be sent
}

var (
	_ http.ResponseWriter = (*h1response)(nil)
	_ http.Flusher        = (*h1response)(nil)
	_ http.Hijacker       = (*h1response)(nil)
)

func (w *h1response) reset(c *h1conn, req *http.Request) {
	buf := w.buf[:0]
	if buf == nil {
		buf = make([]byte, 0, h1BodyBuffer)
	}
	h := w.header
	if h == nil {
		h = make(http.Header)
	} else {
		clear(h)
	}
	*w = h1response{c: c, req: req, header: h, buf: buf, declared: -1, isHEAD: req.Method == http.MethodHead,
		trailers: w.trailers[:0], vals: w.vals[:0]}
	w.closeAfter = req.Close || !req.ProtoAtLeast(1, 1) && !valueHasToken(hget(req.Header, "Connection"), "keep-alive")
}

// Header returns the response header map.
func (w *h1response) Header() http.Header { return w.header }

// swapHeader makes h the response's header map and returns the map it had (see
// headerSwapper): the header must not have been sent, and what the handler set in the old
// map is not in h. The returned map is the caller's from then on; reset keeps h for the
// connection's next request.
func (w *h1response) swapHeader(h http.Header) http.Header {
	old := w.header
	w.header = h
	return old
}

// holding reports whether nothing of the final response has been written to the
// connection's writer yet (see responseHolder): no status line, no header, no body byte.
// Informational responses (1xx) may have been sent.
func (w *h1response) holding() bool { return !w.headerSent }

// WriteHeader sends an informational (1xx but 101) response at once, or sets the final
// status.
func (w *h1response) WriteHeader(code int) {
	if w.c.hijacked || w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		if code == http.StatusContinue {
			w.writeContinue()
			return
		}
		w.stopContinue()
		b := appendStatusLine(w.c.bw.AvailableBuffer(), w.req.ProtoAtLeast(1, 1), code)
		b = w.appendHeader(b, false)
		b = append(b, "\r\n"...)
		w.write(b)
		w.flush()
		return
	}
	w.wroteHeader, w.status = true, code
	if cl := hget(w.header, "Content-Length"); cl != "" {
		if n, ok := parseContentLength(cl); ok {
			w.declared = n
		} else {
			w.header.Del("Content-Length") // net/http drops an invalid one too
		}
	}
}

// parseContentLength is a Content-Length value as WriteHeader takes it: what
// strconv.ParseInt(v, 10, 64) makes of it, if that is not negative; plain digits (the usual
// case) are read without it.
func parseContentLength(v string) (int64, bool) {
	if len(v) > 0 && len(v) <= 18 {
		var n int64
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c < '0' || c > '9' {
				goto slow
			}
			n = n*10 + int64(c-'0')
		}
		return n, true
	}
slow:
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n >= 0
}

// writeContinue sends 100 Continue, if the final response has not started. Called when
// the handler first reads the body (possibly on another goroutine) or sends 100 itself.
func (w *h1response) writeContinue() {
	w.contMu.Lock()
	defer w.contMu.Unlock()
	if !w.canContinue {
		return
	}
	w.canContinue = false
	line := "HTTP/1.1 100 Continue\r\n\r\n"
	if !w.req.ProtoAtLeast(1, 1) {
		line = "HTTP/1.0 100 Continue\r\n\r\n"
	}
	if _, err := w.c.rwc.Write([]byte(line)); err != nil {
		w.c.reqMu.Lock()
		if rc := w.c.reqCtx; rc != nil {
			rc.cancel()
		}
		w.c.reqMu.Unlock()
	}
}

// stopContinue prevents a 100 Continue once the response has started.
func (w *h1response) stopContinue() {
	// Lock order: body.mu before contMu (a body read sends 100 Continue), so this takes
	// contMu alone.
	w.contMu.Lock()
	if w.canContinue {
		// 100 Continue was never sent, so the body was never read: the client may still
		// send it, or not. The connection cannot be reused.
		w.canContinue = false
		w.closeAfter = true
	}
	w.contMu.Unlock()
}

func bodyAllowedForStatus(code int) bool {
	switch {
	case code >= 100 && code <= 199, code == http.StatusNoContent, code == http.StatusNotModified:
		return false
	}
	return true
}

// Write buffers or sends body bytes.
func (w *h1response) Write(p []byte) (int, error) {
	if w.c.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.declared != -1 && w.written > w.declared {
		return 0, http.ErrContentLength
	}
	if !w.headerSent {
		if len(w.buf)+len(p) <= cap(w.buf) {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		w.startBody()
	}
	w.writeBody(p)
	if w.werr {
		return 0, errResponseWrite
	}
	return len(p), nil
}

var errResponseWrite = errors.New("l7: writing the response failed")

// WriteString is Write for strings.
func (w *h1response) WriteString(s string) (int, error) {
	return w.Write([]byte(s))
}

// writeBody frames p (after the header has been sent).
func (w *h1response) writeBody(p []byte) {
	if w.isHEAD || len(p) == 0 {
		return
	}
	if w.chunked {
		b := strconv.AppendInt(w.c.bw.AvailableBuffer(), int64(len(p)), 16)
		b = append(b, "\r\n"...)
		w.write(b)
		w.write(p)
		w.write([]byte("\r\n"))
		return
	}
	w.write(p)
}

func (w *h1response) write(b []byte) {
	if w.werr {
		return
	}
	if _, err := w.c.bw.Write(b); err != nil {
		w.werr, w.closeAfter = true, true
	}
}

func (w *h1response) flush() {
	if w.werr {
		return
	}
	if err := w.c.bw.Flush(); err != nil {
		w.werr, w.closeAfter = true, true
	}
}

// Flush sends the header and what the body has so far.
func (w *h1response) Flush() { _ = w.FlushError() }

// FlushError is Flush reporting a failed write (http.ResponseController).
func (w *h1response) FlushError() error {
	if w.c.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headerSent {
		w.startBody()
	}
	w.flush()
	if w.werr {
		return errResponseWrite
	}
	return nil
}

// SetReadDeadline sets the connection's read deadline (http.ResponseController).
func (w *h1response) SetReadDeadline(t time.Time) error { return w.c.rwc.SetReadDeadline(t) }

// SetWriteDeadline sets the connection's write deadline (http.ResponseController).
func (w *h1response) SetWriteDeadline(t time.Time) error { return w.c.rwc.SetWriteDeadline(t) }

// Hijack hands the connection to the handler, with the response so far (for instance a
// 101 Switching Protocols header) sent first, and a reader holding the bytes already
// received.
func (w *h1response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c := w.c
	if c.hijacked {
		return nil, nil, http.ErrHijacked
	}
	c.unwatch()
	if w.wroteHeader && !w.headerSent {
		w.startBody()
	}
	w.flush()
	if w.werr {
		return nil, nil, errResponseWrite
	}
	if len(c.cr.pending) > 0 {
		// A byte read by the client-gone watch goes with the buffered ones.
		if _, err := c.br.Peek(c.br.Buffered() + 1); err != nil {
			return nil, nil, err
		}
	}
	_ = c.rwc.SetDeadline(time.Time{})
	c.hijacked = true
	c.s.forget(c)
	// Like net/http's, Shutdown neither waits for nor closes hijacked connections.
	c.released = true
	c.s.wg.Done()
	bw := bufio.NewWriter(c.rwc)
	return c.rwc, bufio.NewReadWriter(c.br, bw), nil
}

// startBody sends the header before the handler is done, with the body held back so far.
func (w *h1response) startBody() {
	w.sendHeader(false)
	w.writeBody(w.buf)
	w.buf = w.buf[:0]
}

// sendHeader decides the response's framing and writes its status line and header fields
// to the connection's writer; done means the handler has returned (so a body held back
// is the whole body). It walks the header map once: the fields it decides on are found on
// the way, and the fields it changes are changed both in the map and in the list it writes.
func (w *h1response) sendHeader(done bool) {
	w.stopContinue()
	w.headerSent = true
	code := w.status
	if code == 0 {
		code = http.StatusOK
	}
	var f respFields
	w.collect(&f)
	for _, v := range f.get(fTrailer) {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				w.trailers = append(w.trailers, http.CanonicalHeaderKey(k))
			}
		}
	}
	hasTrailers := len(w.trailers) > 0 || f.trailerPrefix
	te := f.first(fTransferEncoding)
	hasTE := te != ""
	cl := f.first(fContentLength)
	if done && !hasTrailers && !hasTE && bodyAllowedForStatus(code) && cl == "" &&
		(!w.isHEAD || len(w.buf) > 0) {
		cl = strconv.Itoa(len(w.buf))
		w.own[0] = cl
		w.set(&f, fContentLength, w.own[0:1:1])
	}
	if !f.has(fContentType) && !hasTE && bodyAllowedForStatus(code) && len(w.buf) > 0 {
		w.own[1] = http.DetectContentType(w.buf)
		w.set(&f, fContentType, w.own[1:2:2])
	}
	hasCL := cl != ""
	if w.req.ProtoMajor == 1 && w.req.ProtoMinor == 0 && !w.req.Close && valueHasToken(hget(w.req.Header, "Connection"), "keep-alive") {
		if hasCL || w.isHEAD {
			if !f.has(fConnection) {
				w.set(&f, fConnection, []string{"keep-alive"})
			}
			w.closeAfter = false
		} else {
			w.closeAfter = true
		}
	}
	if valueHasToken(f.first(fConnection), "close") || w.c.s.closing.Load() {
		w.closeAfter = true // asked for, or the server is shutting down
	}
	if done && !w.closeAfter && !w.body.finish() {
		w.closeAfter = true // the body the handler left could not be drained
	}
	switch {
	case w.isHEAD || !bodyAllowedForStatus(code):
		w.del(&f, fTransferEncoding)
	case hasCL:
		w.del(&f, fTransferEncoding)
	case w.req.ProtoAtLeast(1, 1):
		if hasTE && te == "identity" {
			w.closeAfter = true
			w.del(&f, fTransferEncoding)
		} else {
			w.chunked = true
			w.set(&f, fTransferEncoding, []string{"chunked"})
		}
	default:
		w.closeAfter = true
		w.del(&f, fTransferEncoding)
	}
	if w.closeAfter && w.req.ProtoAtLeast(1, 1) && !valueHasToken(f.first(fConnection), "close") {
		w.set(&f, fConnection, []string{"close"})
	}
	b := appendStatusLine(w.c.bw.AvailableBuffer(), w.req.ProtoAtLeast(1, 1), code)
	b = w.appendFields(b, !bodyAllowedForStatus(code))
	if !f.has(fDate) {
		b = append(b, "Date: "...)
		b = w.c.date.append(b, w.c.respAt)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	w.write(b)
}

// The header fields sendHeader decides on, as indices into respFields.idx.
const (
	fTrailer = iota
	fTransferEncoding
	fContentLength
	fContentType
	fConnection
	fDate
	nRespFields
)

// respFieldNames are the keys of the fields respFields tracks, by index.
var respFieldNames = [nRespFields]string{"Trailer", "Transfer-Encoding", "Content-Length", "Content-Type", "Connection", "Date"}

// respFields is what one walk over a response header map learned: where each field
// sendHeader decides on sits in the list of fields to write (w.c.keys and w.vals), -1 if
// absent, and whether a trailer is set with http.TrailerPrefix.
type respFields struct {
	idx           [nRespFields]int
	vals          *[][]string
	trailerPrefix bool
}

func (f *respFields) has(i int) bool { return f.idx[i] >= 0 }

func (f *respFields) get(i int) []string {
	if f.idx[i] < 0 {
		return nil
	}
	return (*f.vals)[f.idx[i]]
}

// first is hget: the first value of the field, "" if none.
func (f *respFields) first(i int) string {
	if vv := f.get(i); len(vv) > 0 {
		return vv[0]
	}
	return ""
}

// collect lists the fields of the header map in w.c.keys and w.vals (unsorted) and, if f
// is not nil, records in f where the fields of respFieldNames are.
func (w *h1response) collect(f *respFields) {
	keys, vals := w.c.keys[:0], w.vals[:0]
	if f != nil {
		f.idx = [nRespFields]int{-1, -1, -1, -1, -1, -1}
		f.vals = &w.vals
	}
	for k, vv := range w.header {
		if f != nil {
			switch k {
			case "Trailer":
				f.idx[fTrailer] = len(keys)
			case "Transfer-Encoding":
				f.idx[fTransferEncoding] = len(keys)
			case "Content-Length":
				f.idx[fContentLength] = len(keys)
			case "Content-Type":
				f.idx[fContentType] = len(keys)
			case "Connection":
				f.idx[fConnection] = len(keys)
			case "Date":
				f.idx[fDate] = len(keys)
			default:
				if strings.HasPrefix(k, http.TrailerPrefix) {
					f.trailerPrefix = true
				}
			}
		}
		keys = append(keys, k)
		vals = append(vals, vv)
	}
	w.c.keys, w.vals = keys, vals
}

// set sets field i to vv, in the header map and in the list to write.
func (w *h1response) set(f *respFields, i int, vv []string) {
	w.header[respFieldNames[i]] = vv
	if f.idx[i] >= 0 {
		w.vals[f.idx[i]] = vv
		return
	}
	f.idx[i] = len(w.c.keys)
	w.c.keys = append(w.c.keys, respFieldNames[i])
	w.vals = append(w.vals, vv)
}

// del removes field i from the header map (if there) and from the list to write.
func (w *h1response) del(f *respFields, i int) {
	if j := f.idx[i]; j >= 0 {
		delete(w.header, respFieldNames[i])
		w.vals[j] = nil // written as no field at all
		f.idx[i] = -1
	}
}

// appendHeader appends the header fields (sorted, values with line breaks flattened, as
// net/http writes them), leaving out trailers and, without a body, the framing fields.
func (w *h1response) appendHeader(b []byte, noBody bool) []byte {
	w.collect(nil)
	return w.appendFields(b, noBody)
}

// appendFields is appendHeader for the fields listed by collect (and set), which it
// sorts by key and then forgets.
func (w *h1response) appendFields(b []byte, noBody bool) []byte {
	keys, vals := w.c.keys, w.vals
	sortFields(keys, vals)
	for i, k := range keys {
		if strings.HasPrefix(k, http.TrailerPrefix) || !validFieldName(k) {
			continue
		}
		if noBody && (k == "Content-Length" || k == "Transfer-Encoding") {
			continue
		}
		for _, v := range vals[i] {
			b = appendResponseField(b, k, v)
		}
	}
	clear(keys)
	clear(vals)
	w.c.keys, w.vals = keys[:0], vals[:0]
	return b
}

// sortFields sorts keys, and vals along with them: by insertion for the usual handful of
// fields, else with sort.Sort.
func sortFields(keys []string, vals [][]string) {
	if len(keys) > 24 {
		sort.Sort(fieldSorter{keys, vals})
		return
	}
	for i := 1; i < len(keys); i++ {
		k, v := keys[i], vals[i]
		j := i
		for ; j > 0 && keyAfter(keys[j-1], k); j-- {
			keys[j], vals[j] = keys[j-1], vals[j-1]
		}
		keys[j], vals[j] = k, v
	}
}

// keyAfter reports a > b, deciding on the first bytes without a call to the string
// comparison when they differ (as they usually do between header names).
func keyAfter(a, b string) bool {
	if len(a) > 0 && len(b) > 0 && a[0] != b[0] {
		return a[0] > b[0]
	}
	return a > b
}

// fieldSorter sorts header keys with their values.
type fieldSorter struct {
	keys []string
	vals [][]string
}

func (s fieldSorter) Len() int           { return len(s.keys) }
func (s fieldSorter) Less(i, j int) bool { return s.keys[i] < s.keys[j] }
func (s fieldSorter) Swap(i, j int) {
	s.keys[i], s.keys[j] = s.keys[j], s.keys[i]
	s.vals[i], s.vals[j] = s.vals[j], s.vals[i]
}

func appendResponseField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	v = strings.TrimSpace(v)
	if strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 {
		b = append(b, v...)
		return append(b, "\r\n"...)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return append(b, "\r\n"...)
}

// finish completes the response once the handler has returned.
func (w *h1response) finish() {
	if w.c.hijacked {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headerSent {
		w.sendHeader(true)
		w.writeBody(w.buf)
	} else if !w.body.finish() {
		w.closeAfter = true
	}
	if w.chunked {
		b := append(w.c.bw.AvailableBuffer(), "0\r\n"...)
		for _, k := range w.trailers {
			for _, v := range w.header[k] {
				b = appendResponseField(b, k, v)
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && httpguts.ValidHeaderFieldName(name) {
				for _, v := range vv {
					b = appendResponseField(b, name, v)
				}
			}
		}
		b = append(b, "\r\n"...)
		w.write(b)
	}
	w.flush()
	if w.declared != -1 && w.written != w.declared && !w.isHEAD {
		w.closeAfter = true
	}
	w.buf = w.buf[:0]
	if cap(w.buf) > h1BodyBuffer {
		w.buf = nil
	}
}

// appendStatusLine appends "HTTP/1.x CODE Reason\r\n".
func appendStatusLine(b []byte, is11 bool, code int) []byte {
	if is11 {
		b = append(b, "HTTP/1.1 "...)
	} else {
		b = append(b, "HTTP/1.0 "...)
	}
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if text := http.StatusText(code); text != "" {
		b = append(b, text...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(code), 10)
	}
	return append(b, "\r\n"...)
}

func appendInt(b []byte, n int64) []byte { return strconv.AppendInt(b, n, 10) }

// valueHasToken reports whether the comma-separated header value v holds token (ASCII
// case-insensitive).
func valueHasToken(v, token string) bool {
	for v != "" {
		var part string
		part, v, _ = strings.Cut(v, ",")
		if strings.EqualFold(strings.TrimSpace(part), token) {
			return true
		}
	}
	return false
}

// h1date caches a connection's Date header value for the current second.
type h1date struct {
	sec int64
	b   []byte
}

// append appends the Date value for the time at (Unix nanoseconds), or for now when at is
// zero.
func (d *h1date) append(b []byte, at int64) []byte {
	var now time.Time
	if at != 0 {
		now = time.Unix(0, at)
	} else {
		now = time.Now()
	}
	if s := now.Unix(); s != d.sec || d.b == nil {
		d.sec = s
		d.b = now.UTC().AppendFormat(d.b[:0], http.TimeFormat)
	}
	return append(b, d.b...)
}

// hget is h.Get for a key already in canonical form (no canonicalization on the way).
func hget(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}
