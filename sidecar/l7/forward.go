package l7

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/policy"
)

// Ferry's own forwarder, in place of httputil.ReverseProxy on the request path. It keeps
// ReverseProxy's semantics (Go 1.26, with a Rewrite function) and drops its per-request
// overhead: the downstream request is not deep-cloned (the upstream request shares its
// body and header values, and gets a header map built once without the hop-by-hop
// headers), the per-request state travels as the upstream request's context (see
// state.Value) instead of a context.WithValue, and the response header is copied once.
//
// What it keeps, as ReverseProxy does:
//   - hop-by-hop headers (RFC 9110 §7.6.1: Connection, Proxy-Connection, Keep-Alive,
//     Proxy-Authenticate, Proxy-Authorization, TE, Trailer, Transfer-Encoding, Upgrade) and
//     the headers the Connection header names are removed from the request and the
//     response; "TE: trailers" is passed on when the client sent it;
//   - Forwarded and X-Forwarded-* from the client are replaced: X-Forwarded-For gets the
//     client's address appended, X-Forwarded-Proto and X-Forwarded-Host are passed on (or
//     set from the connection), see forwardedHeaders;
//   - a request without User-Agent goes upstream without one (not Go's default);
//   - unparsable query strings are re-encoded (cleanQuery);
//   - 1xx responses (100 Continue, 103 Early Hints) are forwarded as they arrive;
//   - trailers are announced and copied (gRPC over HTTP/2 depends on them);
//   - streaming responses (unknown length, text/event-stream) are flushed on every write,
//     others are buffered by the server;
//   - 101 Switching Protocols (WebSocket) hijacks the client connection and copies both
//     ways;
//   - a body that fails mid-stream aborts the response (http.ErrAbortHandler), so that the
//     client sees a reset rather than a complete-looking truncated response.

// ErrHTTPResponseIncomplete is the RFC 9209 Proxy-Status error type recorded (in the access
// log and the span; the client's response is already under way) when the upstream's
// response body fails mid-stream and the response is aborted.
const ErrHTTPResponseIncomplete = "http_response_incomplete"

// hopHeader reports whether k is a hop-by-hop header ReverseProxy removes by name.
func hopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// forwardedHeader reports whether k is a forwarding header the client's value of which is
// dropped (the rewrite sets Ferry's own).
func forwardedHeader(k string) bool {
	switch k {
	case "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		return true
	}
	return false
}

// connTokens are the header names a Connection header lists, as sent (not canonicalized,
// so that building the list allocates nothing for a handful of them).
type connTokens struct {
	buf  [4]string
	list []string
}

// parse collects the tokens of the Connection header values v.
func (c *connTokens) parse(v []string) {
	c.list = c.buf[:0]
	for _, f := range v {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				c.list = append(c.list, sf)
			}
		}
	}
}

// names reports whether the header k (a key of a header map) is one the Connection header
// names: what http.Header.Del(token) would remove.
func (c *connTokens) names(k string) bool {
	for _, t := range c.list {
		if len(t) == len(k) && asciiEqualFold(t, k) && textproto.CanonicalMIMEHeaderKey(t) == k {
			return true
		}
	}
	return false
}

// removeHopByHop removes the hop-by-hop headers of h (a response header), as
// ReverseProxy's removeHopByHopHeaders does, without canonicalizing names: a token of
// Connection naming a hop-by-hop header needs no work of its own, another removes the
// key it canonicalizes to.
func removeHopByHop(h http.Header) {
	// One walk over the keys, deleting only what is there.
	var conn []string
	for k, vv := range h {
		if hopHeader(k) {
			if k == "Connection" {
				conn = vv
			}
			delete(h, k)
		}
	}
	delConnectionNamed(conn, h)
}

// removeHopFields is removeHopByHop for the header map of a parsedResponse, whose hop
// lists the hop-by-hop fields it has (see hopFields): it deletes those by name instead of
// walking the map.
func removeHopFields(h http.Header, hop uint8) {
	if hop == 0 {
		return
	}
	var conn []string
	for i, k := range hopFields {
		if hop&(1<<i) != 0 {
			if i == 0 {
				conn = h[k]
			}
			delete(h, k)
		}
	}
	delConnectionNamed(conn, h)
}

// delConnectionNamed removes from each of hs the headers the Connection header values conn
// name (but the hop-by-hop ones, which are removed by name). It reports whether conn
// named any other header (whether or not hs had it).
func delConnectionNamed(conn []string, hs ...http.Header) (named bool) {
	if len(conn) == 0 || onlyHopTokens(conn) {
		return false // the usual "keep-alive": nothing to parse and keep
	}
	var ct connTokens
	ct.parse(conn)
	for _, t := range ct.list {
		if !hopToken(t) {
			named = true
			for _, h := range hs {
				h.Del(t)
			}
		}
	}
	return named
}

// onlyHopTokens reports whether every token of the Connection header values conn names a
// hop-by-hop header (hopToken), as connTokens.parse splits them, without collecting them
// (a connTokens escapes to the heap).
func onlyHopTokens(conn []string) bool {
	for _, f := range conn {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" && !hopToken(sf) {
				return false
			}
		}
	}
	return true
}

// hopToken reports whether the Connection token t names a hop-by-hop header (hopHeader),
// in any case.
func hopToken(t string) bool {
	switch len(t) {
	case 2:
		return asciiEqualFold(t, "Te")
	case 7:
		return asciiEqualFold(t, "Upgrade") || asciiEqualFold(t, "Trailer")
	case 10:
		return asciiEqualFold(t, "Keep-Alive") || asciiEqualFold(t, "Connection")
	case 16:
		return asciiEqualFold(t, "Proxy-Connection")
	case 17:
		return asciiEqualFold(t, "Transfer-Encoding")
	case 18:
		return asciiEqualFold(t, "Proxy-Authenticate")
	case 19:
		return asciiEqualFold(t, "Proxy-Authorization")
	}
	return false
}

// asciiEqualFold reports whether a and b are equal in ASCII case-insensitive comparison
// (HTTP tokens; strings.EqualFold also folds non-ASCII letters such as U+212A KELVIN SIGN
// onto ASCII ones).
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// containsToken reports whether the comma-separated header values v contain token,
// ASCII case-insensitively (httpguts.HeaderValuesContainsToken).
func containsToken(v []string, token string) bool {
	for _, f := range v {
		for sf := range strings.SplitSeq(f, ",") {
			if asciiEqualFold(strings.Trim(sf, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// upgradeType is the protocol a message with header h asks to switch to, "" for none.
func upgradeType(h http.Header) string {
	if !containsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// printable reports whether s is printable ASCII.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// reqFields is what upstreamHeader learned of the downstream request's header in its one
// walk over it: the values of the fields forward decides on (nil if absent), and whether
// the upstream header it built has a User-Agent.
type reqFields struct {
	conn, te, upgrade []string
	xff, xfp, xfh     []string
	userAgent         bool
}

// upgrade1 is upgradeType for the header f was learned from.
func (f *reqFields) upgrade1() string {
	if !containsToken(f.conn, "Upgrade") || len(f.upgrade) == 0 {
		return ""
	}
	return f.upgrade[0]
}

// upstreamHeader builds the header of the upstream request from in, the downstream
// request's, into out (an empty map, or nil for a new one) and returns it: everything but
// the hop-by-hop headers, the headers Connection names and the client's forwarding
// headers. Values are shared with in, capacity-clipped so that an append to them never
// writes into in's arrays. It records in f what forward needs of in.
func upstreamHeader(out, in http.Header, f *reqFields) http.Header {
	if out == nil {
		out = make(http.Header, len(in)+3)
	}
	for k, vv := range in {
		switch k {
		case "Connection":
			f.conn = vv
			continue
		case "Te":
			f.te = vv
			continue
		case "Upgrade":
			f.upgrade = vv
			continue
		case "X-Forwarded-For":
			f.xff = vv
			continue
		case "X-Forwarded-Proto":
			f.xfp = vv
			continue
		case "X-Forwarded-Host":
			f.xfh = vv
			continue
		case "User-Agent":
			f.userAgent = true
		}
		if hopHeader(k) || forwardedHeader(k) {
			continue
		}
		out[k] = vv[:len(vv):len(vv)]
	}
	if len(f.conn) > 0 {
		// Made only when there is a Connection header: connTokens escapes (its list
		// points into its own array).
		ct := new(connTokens)
		ct.parse(f.conn)
		if len(ct.list) > 0 {
			for k := range out {
				if ct.names(k) {
					delete(out, k)
					if k == "User-Agent" {
						f.userAgent = false
					}
				}
			}
		}
	}
	return out
}

// maxKeptHeader is the most fields the upstream request's header map of a state may have
// had to be kept for the next request: a larger one is dropped, so that one large request
// does not leave a large map behind.
const maxKeptHeader = 32

// headerReusable reports whether the header map of out, the upstream request sent through
// tr, is no longer used once forward returns, so that st.outHdr may be filled for it and
// cleared for the next request. That holds for Ferry's HTTP/1.1 pool when the request head
// is written by the round trip's goroutine (buildHead; a request without a body or with one
// of known length): net/http's HTTP/2 transport may keep the request past the end of the
// response, and http.Request.Write reads the header on the goroutine that writes a body
// (writeGeneral), which may outlive the response. Retries share the map (each try is a
// shallow copy of out) and finish within forward; the 1xx callback, tracing's header
// injection and the upgrade path all run before forward returns.
func headerReusable(tr *Transport, out *http.Request) bool {
	return tr != nil && tr.h1 != nil && (tr.h2 == nil || out.ProtoMajor != 2) &&
		(out.Body == nil || h1Fast(out))
}

// doneOutHdr empties st.outHdr after a request, so that it keeps no value of the request,
// or drops it when it grew past maxKeptHeader.
func (st *state) doneOutHdr() {
	if len(st.outHdr) > maxKeptHeader {
		st.outHdr = nil
		return
	}
	clear(st.outHdr)
}

// forwardedHeaders sets X-Forwarded-For (the client's address appended to what the client
// sent), X-Forwarded-Proto (the client's, else the connection's scheme) and
// X-Forwarded-Host (the client's, if any) on out, the header of the upstream request for
// in, whose forwarding headers upstreamHeader recorded in f. The slices for new values come
// from st.
func forwardedHeaders(st *state, out http.Header, in *http.Request, f *reqFields) {
	clientIP, _, err := net.SplitHostPort(in.RemoteAddr)
	if err != nil {
		clientIP = in.RemoteAddr
	}
	if prior := f.xff; len(prior) > 0 {
		if len(prior) == 1 && prior[0] == st.xffPrior && clientIP == st.xffClient {
			// As the request this state served before: a sidecar's connections usually
			// carry the same client's requests, from the same peer.
			st.xff[0] = st.xffJoined
		} else {
			st.xff[0] = strings.Join(prior, ", ") + ", " + clientIP
			if len(prior) == 1 {
				st.xffPrior, st.xffClient, st.xffJoined = prior[0], clientIP, st.xff[0]
			}
		}
	} else {
		st.xff[0] = clientIP
	}
	out["X-Forwarded-For"] = st.xff[:1:1]
	if p := f.xfp; len(p) > 0 {
		out["X-Forwarded-Proto"] = p[:1:1]
	} else {
		st.xfp[0] = "http"
		if in.TLS != nil {
			st.xfp[0] = "https"
		}
		out["X-Forwarded-Proto"] = st.xfp[:1:1]
	}
	if fh := f.xfh; len(fh) > 0 {
		out["X-Forwarded-Host"] = fh[:1:1]
	}
}

// cleanQuery re-encodes a query string url.ParseQuery would not take as it is (a ';'
// separator, a bad escape, more than 10000 parameters), dropping what it cannot parse,
// as ReverseProxy does so that Ferry and the upstream read the same parameters. (Unlike
// ReverseProxy it ignores a GODEBUG urlmaxqueryparams setting: the limit is url's default.)
func cleanQuery(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	if strings.Count(s, "&")+1 > 10000 {
		return reencode(s)
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// noCloseBody is the upstream request's view of the downstream body: the transport closes
// the request body when it is done or fails, which must not close the server's body (that
// would drain it, or hang on a client waiting for 100 Continue). Reads after Close fail,
// as the handler has returned by then.
type noCloseBody struct {
	rc     io.ReadCloser
	closed atomic.Bool
}

func (b *noCloseBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errors.New("read on the request body after the upstream request was closed")
	}
	return b.rc.Read(p)
}

// Close marks the body closed; the downstream body stays open for the server.
func (b *noCloseBody) Close() error {
	b.closed.Store(true)
	return nil
}

// forward sends the downstream request r (whose context, with its server span, is ctx)
// upstream (to st.t) and copies the response to the client through st. path, if not "",
// is the path to send instead of r's. It reports whether the response was cut short after
// its header was sent; the caller then aborts the handler (http.ErrAbortHandler) once it
// has done its accounting.
func (h *Handler) forward(ctx context.Context, st *state, r *http.Request, path string) (aborted bool) {
	st.ctx = ctx
	st.out = *r.WithContext(st)
	out := &st.out
	st.url = *r.URL
	out.URL = &st.url
	out.URL.Scheme = "http"
	out.URL.Host = r.Host // replaced by the picked endpoint in RoundTrip
	if path != "" {
		// The normalized path goes upstream; r keeps the caller's for the access log.
		policy.SetURLPath(out.URL, path)
	}
	out.URL.RawQuery = cleanQuery(out.URL.RawQuery)
	if r.Trailer != nil {
		out.Trailer = r.Trailer.Clone()
	}
	if r.ContentLength == 0 {
		out.Body = nil // no body: lets the transport retry on a stale pooled connection
	} else if out.Body != nil {
		st.body.rc = r.Body
		out.Body = &st.body
		defer st.body.Close()
	}
	out.Close = false

	var f reqFields
	var hdr http.Header // nil: a new map
	if headerReusable(st.t.transport, out) {
		if st.outHdr == nil {
			st.outHdr = make(http.Header, len(r.Header)+3)
		}
		hdr = st.outHdr
		defer st.doneOutHdr()
	}
	out.Header = upstreamHeader(hdr, r.Header, &f)
	upType := f.upgrade1() // upgradeType(r.Header)
	if !printable(upType) {
		h.errorHandler(st, r, fmt.Errorf("client tried to switch to invalid protocol %q", upType))
		return false
	}
	if containsToken(f.te, "trailers") {
		st.te[0] = "trailers"
		out.Header["Te"] = st.te[:1:1]
	}
	if upType != "" {
		out.Header["Connection"] = []string{"Upgrade"}
		out.Header["Upgrade"] = []string{upType}
	}
	forwardedHeaders(st, out.Header, r, &f)
	hasUA := f.userAgent
	if st.route != nil {
		st.route.entry.ApplyRequestHeaders(out.Header)
		_, hasUA = out.Header["User-Agent"] // the route's rules may set or remove it
	}
	if !hasUA {
		// No User-Agent from the client: send none rather than Go's default.
		out.Header["User-Agent"] = st.ua[:1:1]
	}
	// 1xx responses reach got1xx: from Ferry's HTTP/1.1 pool through the state (see
	// informational), from net/http's transports through an httptrace.ClientTrace, as
	// they do when the downstream context has a trace of its own to compose with.
	if tr := st.t.transport; tr == nil || !tr.http1(out) || httptrace.ContextClientTrace(ctx) != nil {
		st.out = *out.WithContext(httptrace.WithClientTrace(st, &httptrace.ClientTrace{Got1xxResponse: st.got1xx}))
	}

	res, err := roundTripper{h}.RoundTrip(out)
	st.mu.Lock()
	st.rtDone = true
	st.mu.Unlock()
	if err != nil {
		h.errorHandler(st, out, err)
		return false
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		if st.route != nil {
			st.route.entry.ApplyResponseHeaders(res.Header)
		}
		h.switchProtocols(st, out, res)
		return false
	}
	dst := st.Header()
	// The response's Content-Type, when the copy below learned it (ctKnown).
	var ctype []string
	ctKnown := false
	var pr *parsedResponse // res's, when the client's response can adopt its header map
	sw, swaps := st.ResponseWriter.(headerSwapper)
	if swaps && st.route == nil && len(dst) == 0 {
		pr = adoptable(res)
	}
	if pr != nil {
		// Nothing in between and nothing to merge with, and res's header map is the pool's
		// to recycle: the hop-by-hop headers are removed from it in place and the client's
		// response takes the map itself, giving its own (empty) one to res in exchange.
		removeHopFields(res.Header, pr.hop)
		ctype, ctKnown = res.Header["Content-Type"], true
		res.Header = sw.swapHeader(res.Header)
		dst = st.Header()
	} else if st.route == nil && len(dst) == 0 {
		// Nothing in between and nothing to merge with: the hop-by-hop headers are left
		// out while copying (res.Header keeps them but for those Connection names).
		var conn []string
		for k, vv := range res.Header {
			if hopHeader(k) {
				if k == "Connection" {
					conn = vv
				}
				continue
			}
			if k == "Content-Type" {
				ctype = vv
			}
			dst[k] = vv
		}
		ctKnown = !delConnectionNamed(conn, res.Header, dst)
	} else {
		removeHopByHop(res.Header)
		if st.route != nil {
			st.route.entry.ApplyResponseHeaders(res.Header)
		}
		for k, vv := range res.Header {
			if prior, ok := dst[k]; ok {
				dst[k] = append(prior, vv...)
			} else {
				dst[k] = vv
			}
		}
	}
	// The transport's response has no Trailer header: announce the trailers it expects.
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
	}
	st.WriteHeader(res.StatusCode)
	var stream bool
	if ctKnown {
		stream = streamingType(res.ContentLength, ctype)
	} else {
		stream = streaming(res)
	}
	if stream {
		// The header goes out now, even if the first bytes of the body take a while.
		st.flush()
	}
	if client, err := h.copyBody(st, res.Body, stream); err != nil {
		res.Body.Close()
		kind := ErrHTTPResponseIncomplete // the upstream's body failed
		if client {
			kind = ErrConnectionTerminated // writing to the client failed
		}
		st.proxyStatus = ProxyName + "; error=" + kind + "; details=" + strconv.Quote(err.Error())
		doneWith(res)
		return true
	}
	res.Body.Close() // now, so that res.Trailer is complete
	if len(res.Trailer) > 0 {
		// Force chunking: a short body would otherwise get a Content-Length and no trailers.
		st.flush()
	}
	copyTrailers(dst, res.Trailer, announced)
	if hw, ok := st.ResponseWriter.(responseHolder); ok && hw.holding() {
		// Nothing went to the client since the connection went back to the pool (the
		// body's end, after any 1xx): from that reading to ServeHTTP's end there is only
		// work that does not wait, so it is, to a few microseconds, the request's end.
		st.end = releasedAt(res)
	}
	doneWith(res)
	return false
}

// responseHolder is a ResponseWriter that tells whether it still holds the whole response
// back, nothing of it written to the client yet (the H1Server's response). holding is for
// the handler's goroutine only.
type responseHolder interface {
	holding() bool
}

// releasedAt is when the connection of res, a response of Ferry's HTTP/1.1 pool whose body
// forward read to its end, went back to the pool (the clock as the pool read it then); zero
// for any other response, or one whose connection was not reused. Like doneWith, it is
// for the goroutine that read the body.
func releasedAt(res *http.Response) time.Time {
	if d, ok := res.Body.(*doneBody); ok {
		if b, ok := d.ReadCloser.(*h1Body); ok {
			return b.at
		}
	}
	return time.Time{}
}

// headerSwapper is a ResponseWriter that can take a header map in place of its own: Ferry's
// HTTP/1.1 server's response (h1response). swapHeader makes h the response's header map and
// returns the one it had, which the caller then owns; the response must not have written
// its header yet. It is for the handler's goroutine only.
type headerSwapper interface {
	swapHeader(h http.Header) http.Header
}

// adoptable returns the parsedResponse res is part of when the header map of res, a
// response of the round trip, may go to the client's response (headerSwapper) in exchange
// for another map, else nil. It may when res comes from Ferry's HTTP/1.1 pool, whose
// parsedResponse owns the map and gets the other one when doneWith recycles it, and
// nothing reads res.Header after forward has copied the header but for the end of the
// body (doneBody.finish), which reads it only for a gRPC response (its grpc-status, for
// outlier detection) and for an attempt's client span (the grpc-status it records): those
// keep their map and are copied from.
func adoptable(res *http.Response) *parsedResponse {
	d, ok := res.Body.(*doneBody)
	if !ok || d.grpc || d.span != nil || d.resp != res {
		return nil
	}
	if b, ok := d.ReadCloser.(*h1Body); ok && b.pr != nil && &b.pr.resp == res {
		return b.pr
	}
	return nil
}

// copyTrailers adds the trailers tr of the upstream's response to the client's header dst:
// as they are when the response announced all of them (announced is how many it did), else
// with http.TrailerPrefix. The values are shared with tr.
func copyTrailers(dst, tr http.Header, announced int) {
	if len(tr) == announced {
		for k, vv := range tr {
			dst[k] = append(dst[k], vv...)
		}
		return
	}
	for k, vv := range tr {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// doneWith is forward's last use of res, a response of the round trip whose body is
// closed: Ferry's HTTP/1.1 pool may give its parts (the response, its header map, its
// body) to a later response on the same connection from then on (h1Body.recycle), so
// nothing may read res afterwards. What the client's header took from res is unaffected:
// the values of res.Header and res.Trailer are never recycled, and neither is the map of
// res.Trailer; a header map the client's response adopted (headerSwapper) is no longer
// res's, which recycles the map it got in exchange. The abandoned tries of the retry loop
// and the error paths never get here: their responses are left to the garbage collector.
func doneWith(res *http.Response) {
	if d, ok := res.Body.(*doneBody); ok {
		if b, ok := d.ReadCloser.(*h1Body); ok {
			b.recycle()
		}
	}
}

// streaming reports whether res is copied with a flush after every write: Server-Sent
// Events, and bodies of unknown length (chunked HTTP/1.1, most HTTP/2 and gRPC).
func streaming(res *http.Response) bool {
	if res.ContentLength == -1 {
		return true
	}
	return streamingType(res.ContentLength, res.Header["Content-Type"])
}

// streamingType is streaming for a response of length n with Content-Type values ct.
func streamingType(n int64, ct []string) bool {
	if n == -1 {
		return true
	}
	if len(ct) == 0 {
		return false
	}
	base, _, _ := strings.Cut(ct[0], ";")
	return asciiEqualFold(strings.TrimSpace(base), "text/event-stream")
}

// copyBody copies the response body to the client through st, with a pooled buffer,
// flushing after every write when stream is set. It returns a read error other than EOF,
// or a write error with client set.
func (h *Handler) copyBody(st *state, body io.Reader, stream bool) (client bool, err error) {
	bp := h.buffers.p.Get().(*[]byte)
	defer h.buffers.p.Put(bp)
	buf := *bp
	for {
		nr, rerr := body.Read(buf)
		if rerr != nil && rerr != io.EOF && rerr != context.Canceled && h.logger.Enabled(st, slog.LevelDebug) {
			h.logger.Debug("upstream response body read failed", "direction", h.o.Direction,
				"upstream", st.upstreamName(h.o.Name), "endpoint", st.endpoint, "error", rerr, "request_id", st.requestID)
		}
		if nr > 0 {
			nw, werr := st.Write(buf[:nr])
			if werr != nil {
				return true, werr
			}
			if nw != nr {
				return true, io.ErrShortWrite
			}
			if stream {
				st.flush()
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return false, nil
			}
			return false, rerr
		}
	}
}

// got1xx forwards an informational response (100 Continue, 103 Early Hints) to the client,
// unless the round trip has returned (the final response's header is being written then).
// The transport calls it from its own goroutine.
func (st *state) got1xx(code int, header textproto.MIMEHeader) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.rtDone {
		return nil
	}
	h := st.Header()
	for k, vv := range header {
		h[k] = append(h[k], vv...)
	}
	st.WriteHeader(code)
	// WriteHeader does not clear the header after a 1xx: the final response must not
	// inherit it.
	clear(h)
	return nil
}

// flush sends what the server has buffered of the response to the client.
func (st *state) flush() {
	if f, ok := st.ResponseWriter.(http.Flusher); ok {
		f.Flush()
		return
	}
	_ = http.NewResponseController(st.ResponseWriter).Flush()
}

// switchProtocols completes a 101 Switching Protocols (WebSocket) response: it checks the
// upstream agreed to the protocol asked for, hijacks the client's connection, writes the
// response header and copies bytes both ways until either side is done.
func (h *Handler) switchProtocols(st *state, req *http.Request, res *http.Response) {
	reqUp, resUp := upgradeType(req.Header), upgradeType(res.Header)
	if !printable(resUp) {
		res.Body.Close()
		h.errorHandler(st, req, fmt.Errorf("backend tried to switch to invalid protocol %q", resUp))
		return
	}
	if !asciiEqualFold(reqUp, resUp) {
		res.Body.Close()
		h.errorHandler(st, req, fmt.Errorf("backend tried to switch protocol %q when %q was requested", resUp, reqUp))
		return
	}
	back, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		res.Body.Close()
		h.errorHandler(st, req, errors.New("internal error: 101 switching protocols response with non-writable body"))
		return
	}
	conn, brw, err := http.NewResponseController(st.ResponseWriter).Hijack()
	if errors.Is(err, http.ErrNotSupported) {
		back.Close()
		h.errorHandler(st, req, fmt.Errorf("can't switch protocols using non-Hijacker ResponseWriter type %T", st.ResponseWriter))
		return
	}
	// Cancelling the request (the client went away, a drain timeout) closes the backend.
	stop := make(chan struct{})
	go func() {
		select {
		case <-req.Context().Done():
		case <-stop:
		}
		back.Close()
	}()
	defer close(stop)
	if err != nil {
		h.errorHandler(st, req, fmt.Errorf("hijack failed on protocol switch: %v", err))
		return
	}
	defer conn.Close()
	st.status = http.StatusSwitchingProtocols
	hdr := st.Header()
	for k, vv := range res.Header {
		hdr[k] = append(hdr[k], vv...)
	}
	res.Header = hdr
	res.Body = nil // res.Write writes the header only; the body is back
	if err := res.Write(brw); err != nil {
		h.logger.Debug("protocol switch: writing the response failed", "error", err, "request_id", st.requestID)
		return
	}
	if err := brw.Flush(); err != nil {
		h.logger.Debug("protocol switch: writing the response failed", "error", err, "request_id", st.requestID)
		return
	}
	errc := make(chan error, 1)
	go copyHalf(conn, back, errc)
	go copyHalf(back, conn, errc)
	// Both directions done, or one failed.
	if err := <-errc; err == nil {
		<-errc
	}
}

// copyHalf copies src to dst and then half-closes dst (if it can), reporting on errc.
func copyHalf(dst io.Writer, src io.Reader, errc chan<- error) {
	if _, err := io.Copy(dst, src); err != nil {
		errc <- err
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		errc <- cw.CloseWrite()
		return
	}
	errc <- errCopyDone
}

var errCopyDone = errors.New("hijacked connection copy complete")

// Deadline, Done, Err and Value make a state the context of its upstream request: the
// request's context with the state reachable under stateKey, at no extra allocation.

// Deadline returns the deadline of the downstream request's context.
func (st *state) Deadline() (time.Time, bool) { return st.ctx.Deadline() }

// Done returns the Done channel of the downstream request's context.
func (st *state) Done() <-chan struct{} { return st.ctx.Done() }

// Err returns the error of the downstream request's context.
func (st *state) Err() error { return st.ctx.Err() }

// Value returns st for stateKey and informationalKey, else what the downstream request's
// context holds.
func (st *state) Value(key any) any {
	switch key.(type) {
	case stateKey, informationalKey:
		return st
	}
	return st.ctx.Value(key)
}

var _ context.Context = (*state)(nil)
