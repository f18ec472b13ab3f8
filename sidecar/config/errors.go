package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
	"go.yaml.in/yaml/v3"
)

// Error is one problem in a config file. It prints as "file:line: path: msg"; parts that are
// unknown (a zero Line, an empty Path) are left out.
type Error struct {
	// File is the file name given to Load or Parse.
	File string
	// Line is the 1-based line of the problem, or 0 when it has none (for example a file
	// that cannot be read, or a Config validated without its file).
	Line int
	// Path is where in the schema the problem is, e.g. "upstreams[1].lb"; empty for the
	// file as a whole.
	Path string
	// Msg says what is wrong and, where it helps, what is wanted.
	Msg string
	// Err is the underlying error, if any (for example the *fs.PathError of a file that
	// cannot be read), so that errors.Is(err, fs.ErrNotExist) works on an Errors.
	Err error
}

// Error formats e as "file:line: path: msg".
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the underlying error, or nil.
func (e *Error) Unwrap() error { return e.Err }

// Errors is every problem found in one config file, ordered by line. Load and Parse return
// it as their error; use errors.As to get at the individual problems.
type Errors []*Error

// Error returns one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the individual problems, for errors.Is and errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// path is a location in the schema: a sequence of mapping keys (string) and list indexes
// (int), e.g. path{"upstreams", 1, "lb"}. List indexes count items in the file, which can
// differ from indexes in the decoded slices when items failed to decode (see locator).
type path []any

// with returns a new path: p followed by elems. It never shares p's backing array.
func (p path) with(elems ...any) path {
	out := make(path, 0, len(p)+len(elems))
	return append(append(out, p...), elems...)
}

// simpleKey reports whether a key can be written in a path without quotes.
func simpleKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		b := k[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-') {
			return false
		}
	}
	return true
}

// String formats p as "upstreams[1].lb". Keys that are not plain words are quoted.
func (p path) String() string {
	var b strings.Builder
	for _, e := range p {
		switch e := e.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", e)
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			if simpleKey(e) {
				b.WriteString(e)
			} else {
				b.WriteString(strconv.Quote(e))
			}
		}
	}
	return b.String()
}

// under reports whether the formatted path p is prefix or lies below it.
func under(p, prefix string) bool {
	if prefix == "" || p == prefix {
		return true
	}
	return strings.HasPrefix(p, prefix+".") || strings.HasPrefix(p, prefix+"[")
}

// collector gathers the problems of one file. Decoding problems mark the part of the
// schema they make unreliable as broken; semantic problems found later at or below a
// broken path are dropped, because they would only repeat the decoding problem (a duration
// that failed to parse is also "not positive").
type collector struct {
	file   string
	loc    *locator
	errs   Errors
	broken map[string]bool // formatted paths
	byLine map[int][]entry // the document's nodes by line, built on first use
}

// fail records a problem found while reading or decoding the file, at line and path p.
func (c *collector) fail(line int, p path, msg string) {
	c.errs = append(c.errs, &Error{File: c.file, Line: line, Path: p.String(), Msg: msg})
}

// mark marks p as broken: decoding failed there, so the decoded value is unreliable.
func (c *collector) mark(p path) {
	if c.broken == nil {
		c.broken = make(map[string]bool)
	}
	c.broken[p.String()] = true
}

// brokenUnder reports whether p is at or below a broken path.
func (c *collector) brokenUnder(p path) bool {
	for k := 0; k <= len(p) && len(c.broken) > 0; k++ {
		if c.broken[p[:k].String()] {
			return true
		}
	}
	return false
}

// add records a semantic problem at p, unless p is broken.
func (c *collector) add(p path, format string, args ...any) {
	c.addAt(p, p, format, args...)
}

// addAt records a semantic problem reported at path p with the line of path lineOf.
func (c *collector) addAt(p, lineOf path, format string, args ...any) {
	if c.brokenUnder(p) {
		return
	}
	c.errs = append(c.errs, &Error{File: c.file, Line: c.loc.line(lineOf), Path: p.String(), Msg: fmt.Sprintf(format, args...)})
}

// brokenWhere reports whether any broken path satisfies match.
func (c *collector) brokenWhere(match func(string) bool) bool {
	for b := range c.broken {
		if match(b) {
			return true
		}
	}
	return false
}

// result returns the problems, sorted by line and without repeats, or nil.
func (c *collector) result() error {
	if len(c.errs) == 0 {
		return nil
	}
	sort.SliceStable(c.errs, func(i, j int) bool { return c.errs[i].Line < c.errs[j].Line })
	type key struct {
		line      int
		path, msg string
	}
	seen := make(map[key]bool, len(c.errs))
	out := make(Errors, 0, len(c.errs))
	for _, e := range c.errs {
		// An anchored value used twice is decoded, and reported, twice.
		k := key{e.Line, e.Path, e.Msg}
		if !seen[k] {
			seen[k] = true
			out = append(out, e)
		}
	}
	return out
}

var (
	reLine       = regexp.MustCompile(`(?s)^line (\d+): (.*)$`)
	reCol        = regexp.MustCompile(`(?s)^col (\d+): (.*)$`)
	reNotFound   = regexp.MustCompile(`(?s)^field (.*) not found in type (\S+)$`)
	reAlreadySet = regexp.MustCompile(`(?s)^field (.*) already set in type (\S+)$`)
	reDupKey     = regexp.MustCompile(`(?s)^mapping key (".*") already defined at line (\d+)$`)
	reCannot     = regexp.MustCompile("(?s)^cannot unmarshal (\\S+)(?: `(.*)`)? into (\\S+)$")
)

// parserProblems are the problems yaml.v3's parser (as opposed to its scanner) reports.
// yaml.v3 prints their line 0-based, and leaves it out on the first line.
var parserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

// syntax records an error of the YAML parser, or any other error that aborted decoding,
// and marks the whole file broken. data is the file, to find the line of a problem yaml.v3
// reports without one; nil if the error did not come from reading data.
func (c *collector) syntax(err error, data []byte) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := reLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
		if parserProblems[msg] {
			line++
		}
		// At the end of input yaml.v3 may point one line past the last.
		if last := countLines(data); data != nil && line > last {
			line = last
		}
	} else if data != nil {
		line = badCharLine(data)
		if line == 0 {
			// The scanner and the parser leave the line out when it is the first.
			line = 1
		}
	}
	c.fail(line, nil, "invalid YAML: "+msg)
	c.mark(nil)
}

// countLines returns the number of lines in data as YAML counts them: line breaks are LF,
// CR, CR LF, NEL, LS and PS. The text after the last break, even if empty, is a line.
func countLines(data []byte) int {
	n := 1
	for i := 0; i < len(data); i++ {
		switch {
		case data[i] == '\n':
			n++
		case data[i] == '\r':
			n++
			if i+1 < len(data) && data[i+1] == '\n' {
				i++
			}
		case data[i] == 0xc2 && i+1 < len(data) && data[i+1] == 0x85:
			n++
			i++
		case data[i] == 0xe2 && i+2 < len(data) && data[i+1] == 0x80 && (data[i+2] == 0xa8 || data[i+2] == 0xa9):
			n++
			i += 2
		}
	}
	return n
}

// badCharLine returns the line of the first byte of data that YAML does not allow in a
// stream (invalid UTF-8, control characters), or 0 if there is none. yaml.v3's reader
// reports such problems without a line.
func badCharLine(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1,
			r < 0x20 && r != '\t' && r != '\n' && r != '\r',
			r == 0x7f, r >= 0x80 && r < 0xa0 && r != 0x85, r == 0xfffe, r == 0xffff:
			return countLines(data[:i])
		}
		i += size
	}
	return 0
}

// decodeError converts the error of the strict decode into Errors. A *yaml.TypeError holds
// one "line N: ..." string per problem; each is matched with its node to find its path and
// rewritten in the file's terms rather than Go's. Any other error aborted decoding.
func (c *collector) decodeError(err error, root *yaml.Node) {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		c.syntax(err, nil)
		return
	}
	if c.byLine == nil {
		c.byLine = make(map[int][]entry)
		for _, e := range index(root) {
			c.byLine[e.n.Line] = append(c.byLine[e.n.Line], e)
		}
	}
	for _, s := range te.Errors {
		c.typeError(s)
	}
}

// typeError converts one message of a *yaml.TypeError; see decodeError.
func (c *collector) typeError(s string) {
	m := reLine.FindStringSubmatch(s)
	if m == nil {
		c.fail(0, nil, s)
		c.mark(nil)
		return
	}
	line, _ := strconv.Atoi(m[1])
	msg := m[2]
	if cm := reCol.FindStringSubmatch(msg); cm != nil {
		// Our own messages (Duration, Endpoint) carry the column to pin down the node.
		col, _ := strconv.Atoi(cm[1])
		if mm := reNotFound.FindStringSubmatch(cm[2]); mm != nil {
			// An unknown key reported by a schema type's own decoder (TracingConfig).
			c.typeError("line " + m[1] + ": " + cm[2])
			return
		}
		e := c.find(line, func(e entry) bool { return !e.key && e.n.Column == col })
		if e.n == nil || e.n.Column != col {
			e = c.find(line, func(e entry) bool { return e.n.Column == col })
		}
		c.fail(line, e.p, cm[2])
		c.mark(e.p)
		return
	}
	if mm := reNotFound.FindStringSubmatch(msg); mm != nil {
		e := c.findKey(line, mm[1], false)
		want := ""
		if keys := knownKeys(mm[2]); len(keys) > 0 {
			want = " (known keys: " + strings.Join(keys, ", ") + ")"
		}
		c.fail(line, e.p, "unknown key"+want)
		c.mark(e.p)
		return
	}
	if mm := reAlreadySet.FindStringSubmatch(msg); mm != nil {
		e := c.findKey(line, mm[1], true)
		c.fail(line, e.p, "duplicate key")
		c.mark(e.p)
		return
	}
	if mm := reDupKey.FindStringSubmatch(msg); mm != nil {
		key, err := strconv.Unquote(mm[1])
		if err != nil {
			key = mm[1]
		}
		e := c.findKey(line, key, true)
		parent := e.p
		if len(parent) > 0 {
			parent = parent[:len(parent)-1]
		}
		// yaml.v3 leaves a mapping with duplicate keys undecoded: all of it is broken.
		c.fail(line, e.p, "duplicate key (first at line "+mm[2]+")")
		c.mark(parent)
		return
	}
	if mm := reCannot.FindStringSubmatch(msg); mm != nil {
		tag, val, goType := mm[1], mm[2], mm[3]
		same := func(e entry) bool {
			if e.n.Tag != tag && e.n.ShortTag() != tag {
				return false
			}
			if tag == "!!seq" || tag == "!!map" {
				return true
			}
			return e.n.Value == val || (strings.HasSuffix(val, "...") && strings.HasPrefix(e.n.Value, strings.TrimSuffix(val, "...")))
		}
		// Several nodes on a line can look alike ({name: {a: 1}}): prefer the one whose
		// place in the schema has the Go type the message names.
		e := c.find(line, func(e entry) bool {
			t := schemaType(e.p)
			return same(e) && t != nil && t.String() == strings.TrimPrefix(goType, "*")
		})
		if !same(e) {
			e = c.find(line, same)
		}
		got := describe(e.n)
		if e.n == nil {
			got = strings.TrimPrefix(tag, "!!")
		}
		c.fail(line, e.p, "want "+wantFor(goType)+", got "+got)
		c.mark(e.p)
		return
	}
	e := c.find(line, func(entry) bool { return true })
	c.fail(line, e.p, msg)
	c.mark(e.p)
}

// find returns the first indexed node on line that satisfies match; failing that the first
// node on the line; failing that an empty entry (the whole file).
func (c *collector) find(line int, match func(entry) bool) entry {
	var first *entry
	nodes := c.byLine[line]
	for i := range nodes {
		e := &nodes[i]
		if match(*e) {
			return *e
		}
		if first == nil {
			first = e
		}
	}
	if first != nil {
		return *first
	}
	return entry{}
}

// findKey returns the key node named key on line (the last one when last is set, for
// duplicates, which yaml.v3 reports at the later occurrence).
func (c *collector) findKey(line int, key string, last bool) entry {
	var found *entry
	nodes := c.byLine[line]
	for i := range nodes {
		e := &nodes[i]
		if e.key && e.n.Value == key {
			found = e
			if !last {
				break
			}
		}
	}
	if found != nil {
		return *found
	}
	return c.find(line, func(e entry) bool { return e.key })
}

// wantFor names, in the file's terms, what a Go type in a yaml.v3 message accepts.
func wantFor(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case goType == "int":
		return "an integer"
	case goType == "float64":
		return "a number"
	case goType == "bool":
		return "true or false"
	case goType == "uint32":
		// Only Endpoint.Weight is a uint32.
		return fmt.Sprintf("an integer from 1 to %d", MaxWeight)
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(strings.TrimPrefix(goType, "*"), "config."):
		return "a mapping"
	}
	return goType
}

// describe says what a node holds, for "got ..." in messages.
func describe(n *yaml.Node) string {
	n = resolve(n)
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		v := n.Value
		if len(v) > 40 {
			v = v[:37] + "..."
		}
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!str":
			return strconv.Quote(v)
		}
		return v
	}
	return "an unsupported value"
}

// schemaType returns the Go type the schema decodes the value at p into (pointers
// dereferenced), or nil if p is not in the schema.
func schemaType(p path) reflect.Type {
	t := reflect.TypeFor[Config]()
	for _, e := range p {
		switch e := e.(type) {
		case int:
			if t.Kind() != reflect.Slice {
				return nil
			}
			t = t.Elem()
		case string:
			if t == reflect.TypeFor[Endpoint]() {
				t = reflect.TypeFor[endpointFields]()
			}
			if t.Kind() != reflect.Struct {
				return nil
			}
			f, ok := fieldByKey(t, e)
			if !ok {
				return nil
			}
			t = f.Type
		}
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
	}
	return t
}

// fieldByKey returns the field of struct type t that YAML key decodes into, following
// inline fields.
func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-" || !f.IsExported():
		case opts == "inline":
			if g, ok := fieldByKey(f.Type, key); ok {
				return g, true
			}
		case name == key || (name == "" && strings.ToLower(f.Name) == key):
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// knownKeys lists the YAML keys of the schema type a yaml.v3 message names (e.g.
// "config.Upstream"), or nil if it is not one of ours.
func knownKeys(typeName string) []string {
	typeName = strings.TrimPrefix(typeName, "*")
	for _, t := range []reflect.Type{
		reflect.TypeFor[Config](), reflect.TypeFor[Admin](), reflect.TypeFor[Telemetry](), reflect.TypeFor[Inbound](),
		reflect.TypeFor[Outbound](), reflect.TypeFor[Upstream](), reflect.TypeFor[endpointFields](),
		reflect.TypeFor[Retries](), reflect.TypeFor[Backoff](), reflect.TypeFor[CircuitBreaker](),
		reflect.TypeFor[OutlierDetection](), reflect.TypeFor[SuccessRate](), reflect.TypeFor[FailurePercentage](),
		reflect.TypeFor[HealthCheck](), reflect.TypeFor[telemetry.TracingConfig](),
		reflect.TypeFor[Ingress](), reflect.TypeFor[IngressCertificate](),
	} {
		if t.String() == typeName {
			return yamlKeys(t)
		}
	}
	return nil
}

// yamlKeys lists the YAML keys of struct type t in field order, following inline fields.
func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-" || !f.IsExported():
			continue
		case opts == "inline":
			keys = append(keys, yamlKeys(f.Type)...)
			continue
		case name == "":
			name = strings.ToLower(f.Name)
		}
		keys = append(keys, name)
	}
	return keys
}
