package policy

import (
	"regexp/syntax"
	"unicode/utf8"
)

// simpleRegex decides, without the regexp engine, the anchored regular expressions header
// conditions most often use: a sequence of ASCII characters and ASCII character classes,
// each possibly repeated ({n,m}, *, +, ?), such as [a-z][a-z0-9-]{1,31} or v[0-9]+. It is
// built only when a greedy left-to-right scan is exact: an element whose count may vary is
// last, or is followed by an element that must occur at least once and whose class shares
// no character with it, so a character the element may take can never be needed by the
// next. It is immutable: safe for concurrent use.
type simpleRegex struct {
	elems []reElem
}

// reElem is one element: a set of ASCII bytes occurring min to max times (max -1: no bound).
type reElem struct {
	set      [2]uint64 // the bytes, as bits (for the checks at compile time)
	in       [256]bool // the bytes, as a table (for matching)
	min, max int
}

func (e *reElem) has(c byte) bool { return e.in[c] }

// compileSimpleRegex returns the simpleRegex deciding the anchored expr exactly as
// regexp.MustCompile(`^(?:` + expr + `)$`).MatchString does, or false when expr has another
// shape.
func compileSimpleRegex(expr string) (*simpleRegex, bool) {
	// Parse what regexp compiles, not expr alone: they differ when expr holds \Q.
	re, err := syntax.Parse(`^(?:`+expr+`)$`, syntax.Perl)
	if err != nil || re.Op != syntax.OpConcat || len(re.Sub) < 2 ||
		re.Sub[0].Op != syntax.OpBeginText || re.Sub[len(re.Sub)-1].Op != syntax.OpEndText {
		return nil, false
	}
	parts := re.Sub[1 : len(re.Sub)-1]
	if len(parts) == 1 && parts[0].Op == syntax.OpCapture {
		parts = parts[0].Sub
		if parts[0].Op == syntax.OpConcat {
			parts = parts[0].Sub
		}
	}
	var s simpleRegex
	for _, p := range parts {
		if p.Op == syntax.OpEmptyMatch {
			continue
		}
		min, max := 1, 1
		switch p.Op {
		case syntax.OpStar:
			min, max, p = 0, -1, p.Sub[0]
		case syntax.OpPlus:
			min, max, p = 1, -1, p.Sub[0]
		case syntax.OpQuest:
			min, max, p = 0, 1, p.Sub[0]
		case syntax.OpRepeat:
			min, max, p = p.Min, p.Max, p.Sub[0]
		}
		for p.Op == syntax.OpCapture {
			p = p.Sub[0]
		}
		switch p.Op {
		case syntax.OpLiteral:
			if p.Flags&syntax.FoldCase != 0 {
				return nil, false
			}
			if min != 1 || max != 1 { // a repeated literal is one rune
				if len(p.Rune) != 1 {
					return nil, false
				}
			}
			for _, r := range p.Rune {
				if r >= utf8.RuneSelf {
					return nil, false
				}
				e := reElem{min: min, max: max}
				e.set[r>>6] |= 1 << (r & 63)
				s.elems = append(s.elems, e)
			}
		case syntax.OpCharClass:
			e := reElem{min: min, max: max}
			for i := 0; i+1 < len(p.Rune); i += 2 {
				lo, hi := p.Rune[i], p.Rune[i+1]
				if hi >= utf8.RuneSelf {
					return nil, false
				}
				for r := lo; r <= hi; r++ {
					e.set[r>>6] |= 1 << (r & 63)
				}
			}
			s.elems = append(s.elems, e)
		default:
			return nil, false
		}
	}
	for i := range s.elems {
		e := &s.elems[i]
		for c := 0; c < utf8.RuneSelf; c++ {
			e.in[c] = e.set[c>>6]&(1<<(c&63)) != 0
		}
		if e.min == e.max || i == len(s.elems)-1 {
			continue
		}
		n := &s.elems[i+1]
		if n.min == 0 || e.set[0]&n.set[0] != 0 || e.set[1]&n.set[1] != 0 {
			return nil, false
		}
	}
	return &s, true
}

// match reports whether the whole of v matches. Every class is ASCII, so a byte of v
// outside ASCII (part of a rune, or invalid UTF-8, which regexp reads as U+FFFD) matches
// no element, as in regexp.
func (s *simpleRegex) match(v string) bool {
	i := 0
	for k := range s.elems {
		e := &s.elems[k]
		n := 0
		for n < e.min {
			if i >= len(v) || !e.has(v[i]) {
				return false
			}
			i++
			n++
		}
		end := len(v)
		if e.max >= 0 && i+e.max-n < end {
			end = i + e.max - n
		}
		for i < end && e.in[v[i]] {
			i++
		}
	}
	return i == len(v)
}
