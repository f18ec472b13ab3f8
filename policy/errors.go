package policy

import (
	"fmt"
	"strconv"
	"strings"
)

// FieldError is one problem in a policy Config: where it is and what is wrong. Path holds
// mapping keys (string) and list indexes (int) from the policy block down, e.g.
// {"access", "rules", 2, "from", 0}, so that the config package can prefix it with
// "policy" and find the line in the YAML file.
type FieldError struct {
	Path []any
	Msg  string
}

// Error formats e as "access.rules[2].from[0]: msg".
func (e *FieldError) Error() string {
	if len(e.Path) == 0 {
		return e.Msg
	}
	return PathString(e.Path) + ": " + e.Msg
}

// PathString formats a FieldError path as "access.rules[2].from[0]".
func PathString(p []any) string {
	var b strings.Builder
	for _, el := range p {
		switch el := el.(type) {
		case int:
			b.WriteString("[" + strconv.Itoa(el) + "]")
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(el)
		}
	}
	return b.String()
}

// path is a FieldError path under construction.
type path []any

// with returns p followed by elems, never sharing p's backing array.
func (p path) with(elems ...any) path {
	out := make(path, 0, len(p)+len(elems))
	return append(append(out, p...), elems...)
}

func fieldErr(p path, format string, args ...any) *FieldError {
	return &FieldError{Path: p, Msg: fmt.Sprintf(format, args...)}
}

// under returns errs with prefix p put in front of each path.
func under(p path, errs []*FieldError) []*FieldError {
	for _, e := range errs {
		e.Path = p.with(e.Path...)
	}
	return errs
}
