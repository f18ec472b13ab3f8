package policy

import (
	"fmt"
	"strings"

	"github.com/ferrymesh/ferry/policy/normalize"
)

// PathPattern is a compiled path pattern. Patterns are written as paths and may hold
// wildcards:
//
//   - no '*': the path must be exactly the pattern (/healthz);
//   - a '*' at the very end matches the rest of the path, slashes included: /api/* matches
//     /api/ and /api/v1/users but not /api, and /api* matches /api and /apiary/x;
//   - elsewhere, '*' matches any run of characters within one segment (/api/*/users
//     matches /api/v1/users, not /api/v1/x/users), and a whole segment "**" matches any
//     number of segments, none included (/api/**/users matches /api/users and
//     /api/a/b/users).
//
// Patterns are normalized with the same normalize.Options as requests (dot segments
// resolved, %61 decoded, lower-cased when matching is case-insensitive), so a pattern
// means what it says however requests spell the path. A PathPattern is immutable: safe for
// concurrent use. Match does not allocate and runs in time linear in the path for exact and
// prefix patterns, and at worst O(len(path) × len(pattern)) for globs.
type PathPattern struct {
	raw  string
	kind pathKind
	lit  string   // exact: the path; prefix and glob: the prefix every match has
	segs []segPat // glob
	// need (glob) holds "/"+S for every segment S of the pattern without wildcard past
	// lit: a path can match only if it contains each, a cheap test before the glob.
	need []string
}

type pathKind uint8

const (
	pathExact pathKind = iota
	pathPrefix
	pathGlob
)

// segPat is one '/'-separated part of a glob.
type segPat struct {
	glob  string // the segment, '*' a wildcard within it
	dstar bool   // "**": any number of whole segments
	open  bool   // last segment ending in '*': the rest of the path follows freely
	wild  bool   // glob holds a '*'
}

// maxPatternLen bounds a pattern, keeping glob matching cheap.
const maxPatternLen = 1024

// CompilePath compiles a path pattern (see PathPattern), normalizing it with opts.
func CompilePath(pattern string, opts normalize.Options) (PathPattern, error) {
	switch {
	case pattern == "":
		return PathPattern{}, fmt.Errorf("empty path pattern")
	case pattern[0] != '/':
		return PathPattern{}, fmt.Errorf("path pattern %q does not start with /", pattern)
	case len(pattern) > maxPatternLen:
		return PathPattern{}, fmt.Errorf("path pattern longer than %d bytes", maxPatternLen)
	case strings.ContainsRune(pattern, ';'):
		return PathPattern{}, fmt.Errorf("path pattern %q holds ';' (path params are stripped before matching)", pattern)
	case strings.Contains(pattern, "***"):
		return PathPattern{}, fmt.Errorf("path pattern %q holds ***", pattern)
	}
	_, norm, err := opts.Path(pattern)
	if err != nil {
		return PathPattern{}, fmt.Errorf("path pattern %q: %w", pattern, err)
	}
	p := PathPattern{raw: pattern}
	star := strings.IndexByte(norm, '*')
	switch {
	case star < 0:
		p.kind, p.lit = pathExact, norm
		return p, nil
	case star == len(norm)-1:
		p.kind, p.lit = pathPrefix, norm[:star]
		return p, nil
	}
	p.kind = pathGlob
	// Every match starts with the literal text before the first wildcard (without the
	// slash before a "**", which may match no segment at all): a cheap first test.
	p.lit = norm[:star]
	if star+1 < len(norm) && norm[star+1] == '*' {
		p.lit = norm[:star-1]
	}
	parts := strings.Split(norm[1:], "/")
	for i, s := range parts {
		sp := segPat{glob: s}
		switch {
		case s == "**":
			sp.dstar = true
		case strings.Contains(s, "**"):
			return PathPattern{}, fmt.Errorf("path pattern %q: ** must be a whole segment", pattern)
		default:
			sp.wild = strings.IndexByte(s, '*') >= 0
			sp.open = i == len(parts)-1 && strings.HasSuffix(s, "*")
		}
		p.segs = append(p.segs, sp)
		if !sp.dstar && !sp.wild && !strings.HasPrefix(p.lit, "/"+strings.Join(parts[:i+1], "/")) {
			p.need = append(p.need, "/"+s)
		}
	}
	return p, nil
}

// MustCompilePath is CompilePath for patterns known to be valid; it panics on an error.
func MustCompilePath(pattern string, opts normalize.Options) PathPattern {
	p, err := CompilePath(pattern, opts)
	if err != nil {
		panic(err)
	}
	return p
}

// String returns the pattern as written.
func (p *PathPattern) String() string { return p.raw }

// Match reports whether path, a match key from normalize.Options.Path, matches p.
func (p *PathPattern) Match(path string) bool {
	switch p.kind {
	case pathExact:
		return path == p.lit
	case pathPrefix:
		return strings.HasPrefix(path, p.lit)
	}
	if !strings.HasPrefix(path, p.lit) || path == "" || path[0] != '/' {
		return false
	}
	for _, n := range p.need {
		if !strings.Contains(path, n) {
			return false
		}
	}
	return matchSegments(p.segs, path[1:])
}

// nextSeg returns the segment of s starting at pos and where the next one starts;
// len(s)+1 when there is none.
func nextSeg(s string, pos int) (seg string, next int) {
	if j := strings.IndexByte(s[pos:], '/'); j >= 0 {
		return s[pos : pos+j], pos + j + 1
	}
	return s[pos:], len(s) + 1
}

// matchSegments matches the '/'-separated segments of s against pats. A "**" pattern
// segment takes any number of segments; it is the classic wildcard algorithm over
// segments, backtracking only to the last "**".
func matchSegments(pats []segPat, s string) bool {
	pi, pos := 0, 0
	starPi, starPos := -1, 0
	for pos <= len(s) {
		if pi < len(pats) && pats[pi].dstar {
			starPi, starPos = pi, pos
			pi++
			continue
		}
		seg, next := nextSeg(s, pos)
		if pi < len(pats) && matchSegment(&pats[pi], seg) {
			if pats[pi].open {
				return true
			}
			pi++
			pos = next
			continue
		}
		if starPi < 0 {
			return false
		}
		// let the last "**" take one more segment
		_, starPos = nextSeg(s, starPos)
		pi, pos = starPi+1, starPos
	}
	for pi < len(pats) && pats[pi].dstar {
		pi++
	}
	return pi == len(pats)
}

// matchSegment matches one path segment against one pattern segment.
func matchSegment(p *segPat, seg string) bool {
	if !p.wild {
		return seg == p.glob
	}
	return wildcard(p.glob, seg)
}

// wildcard reports whether s matches pattern, where '*' matches any run of bytes.
func wildcard(pattern, s string) bool {
	pi, si := 0, 0
	starPi, starSi := -1, 0
	for si < len(s) {
		switch {
		case pi < len(pattern) && pattern[pi] == '*':
			starPi, starSi = pi, si
			pi++
		case pi < len(pattern) && pattern[pi] == s[si]:
			pi++
			si++
		case starPi >= 0:
			starSi++
			pi, si = starPi+1, starSi
		default:
			return false
		}
	}
	for pi < len(pattern) && pattern[pi] == '*' {
		pi++
	}
	return pi == len(pattern)
}

// pathSet is a list of patterns, any of which may match; empty matches every path.
type pathSet []PathPattern

func (ps pathSet) match(path string) bool {
	if len(ps) == 0 {
		return true
	}
	for i := range ps {
		if ps[i].Match(path) {
			return true
		}
	}
	return false
}
