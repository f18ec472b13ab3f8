package config

import (
	"go.yaml.in/yaml/v3"
)

// entry is one node of the document with its path, for matching yaml.v3's "line N: ..."
// messages with the node they are about.
type entry struct {
	n   *yaml.Node
	p   path
	key bool // n is a mapping key; p then ends with its name
}

// index lists the nodes of the tree under root in document order with their paths. Aliases
// are not followed (their target is listed where it is defined); the contents of a mapping
// merged inline with "<<" are listed under the mapping that merges them.
func index(root *yaml.Node) []entry {
	var out []entry
	var walk func(n *yaml.Node, p path)
	var walkMapping func(n *yaml.Node, p path)
	walkMapping = func(n *yaml.Node, p path) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if isMerge(k) {
				out = append(out, entry{n: k, p: p, key: true})
				switch v.Kind {
				case yaml.MappingNode:
					out = append(out, entry{n: v, p: p})
					walkMapping(v, p)
				case yaml.SequenceNode:
					out = append(out, entry{n: v, p: p})
					for _, item := range v.Content {
						if item.Kind == yaml.MappingNode {
							out = append(out, entry{n: item, p: p})
							walkMapping(item, p)
						}
					}
				default:
					out = append(out, entry{n: v, p: p})
				}
				continue
			}
			name := "?"
			if k.Kind == yaml.ScalarNode {
				name = k.Value
			}
			kp := p.with(name)
			out = append(out, entry{n: k, p: kp, key: true})
			walk(v, kp)
		}
	}
	walk = func(n *yaml.Node, p path) {
		out = append(out, entry{n: n, p: p})
		switch n.Kind {
		case yaml.MappingNode:
			walkMapping(n, p)
		case yaml.SequenceNode:
			for i, item := range n.Content {
				walk(item, p.with(i))
			}
		}
	}
	if root != nil {
		walk(root, nil)
	}
	return out
}

// isMerge reports whether n is the merge key "<<", exactly as yaml.v3 decides it.
func isMerge(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" && (n.Tag == "" || n.Tag == "!" || n.ShortTag() == "!!merge")
}

// resolve follows aliases to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 64; i++ {
		n = n.Alias
	}
	return n
}

// mapValue returns the value of key in mapping m, looking into mappings merged with "<<"
// (explicit keys first, then merged ones in order, as yaml.v3 decodes them), or nil.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	seen := make(map[*yaml.Node]bool)
	var search func(m *yaml.Node) *yaml.Node
	search = func(m *yaml.Node) *yaml.Node {
		m = resolve(m)
		if m == nil || m.Kind != yaml.MappingNode || seen[m] {
			return nil
		}
		seen[m] = true
		for i := 0; i+1 < len(m.Content); i += 2 {
			if k := m.Content[i]; !isMerge(k) && k.Kind == yaml.ScalarNode && k.Value == key {
				return m.Content[i+1]
			}
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			if !isMerge(m.Content[i]) {
				continue
			}
			v := resolve(m.Content[i+1])
			if v != nil && v.Kind == yaml.SequenceNode {
				for _, item := range v.Content {
					if r := search(item); r != nil {
						return r
					}
				}
			} else if r := search(v); r != nil {
				return r
			}
		}
		return nil
	}
	return search(m)
}

// hasDuplicateKeys reports whether yaml.v3 refuses mapping m for duplicate keys.
func hasDuplicateKeys(m *yaml.Node) bool {
	for i := 0; i < len(m.Content); i += 2 {
		for j := i + 2; j < len(m.Content); j += 2 {
			if a, b := m.Content[i], m.Content[j]; a.Kind == b.Kind && a.Value == b.Value {
				return true
			}
		}
	}
	return false
}

// locator answers questions about the file behind a decoded Config: the line of a path and
// whether a key was given. A zero locator (a Config built in code) knows no lines and
// reports every key absent.
//
// yaml.v3 leaves list items that fail to decode out of the slice, so after such a failure
// the i-th decoded Outbound may be the (i+1)-th item in the file. The locator keeps, for
// each decoded item of outbound, upstreams and each upstream's endpoints, the index of its
// item in the file; paths in messages use the file's index.
type locator struct {
	root   *yaml.Node
	outIdx []int   // file index of each decoded Outbound
	upIdx  []int   // file index of each decoded Upstream
	epIdx  [][]int // file index of each decoded Endpoint, per decoded Upstream
}

// newLocator builds the locator for c decoded from root (the document's top node).
func newLocator(root *yaml.Node, c *Config) *locator {
	l := &locator{root: root}
	l.outIdx = l.kept(path{"outbound"}, len(c.Outbound), structKept)
	l.upIdx = l.kept(path{"upstreams"}, len(c.Upstreams), structKept)
	l.epIdx = make([][]int, len(c.Upstreams))
	for i, u := range c.Upstreams {
		l.epIdx[i] = l.kept(l.upstream(i).with("endpoints"), len(u.Endpoints), endpointKept)
	}
	return l
}

// kept returns the file indexes of the items of the list at p that yaml.v3 kept, or nil
// (identity) if they do not add up to the n decoded items.
func (l *locator) kept(p path, n int, keep func(*yaml.Node) bool) []int {
	seq, ok := l.find(p)
	seq = resolve(seq)
	if !ok || seq == nil || seq.Kind != yaml.SequenceNode {
		return nil
	}
	idx := make([]int, 0, len(seq.Content)) // non-nil: nil means "unknown"
	for i, item := range seq.Content {
		if keep(item) {
			idx = append(idx, i)
		}
	}
	if len(idx) != n {
		return nil
	}
	return idx
}

// structKept reports whether yaml.v3 keeps a list item decoded into a plain struct.
func structKept(item *yaml.Node) bool {
	r := resolve(item)
	return r != nil && r.Kind == yaml.MappingNode && !hasDuplicateKeys(r)
}

// endpointKept reports whether yaml.v3 keeps a list item decoded into an Endpoint.
func endpointKept(item *yaml.Node) bool {
	r := resolve(item)
	if r == nil {
		return false
	}
	if r.ShortTag() == "!!null" {
		// UnmarshalYAML is skipped for null-tagged nodes; a mapping then decodes as a
		// plain struct.
		return r.Kind == yaml.MappingNode && !hasDuplicateKeys(r)
	}
	var e Endpoint
	return e.UnmarshalYAML(r) == nil
}

func pick(idx []int, i int) int {
	if i < len(idx) {
		return idx[i]
	}
	return i
}

// outbound returns the path of the i-th decoded outbound listener.
func (l *locator) outbound(i int) path { return path{"outbound", pick(l.outIdx, i)} }

// upstream returns the path of the i-th decoded upstream.
func (l *locator) upstream(i int) path { return path{"upstreams", pick(l.upIdx, i)} }

// endpoint returns the path of the j-th decoded endpoint of the i-th decoded upstream.
func (l *locator) endpoint(i, j int) path {
	var idx []int
	if i < len(l.epIdx) {
		idx = l.epIdx[i]
	}
	return l.upstream(i).with("endpoints", pick(idx, j))
}

// endpointItem is an endpoint to validate and its path.
type endpointItem struct {
	p path
	e Endpoint
}

// endpointItems returns the endpoints of the i-th decoded upstream to validate, in file
// order: the decoded ones, plus the items yaml.v3 left out because Endpoint.UnmarshalYAML
// reported a problem (an unknown key, a weight of the wrong type). Those are decoded again
// leniently, so that their other problems (a bad address, weight 0) are reported in the
// same run; a problem at a path that failed to decode is dropped by the collector.
func (l *locator) endpointItems(i int, decoded []Endpoint) []endpointItem {
	items := make([]endpointItem, 0, len(decoded))
	var idx []int
	if i < len(l.epIdx) {
		idx = l.epIdx[i]
	}
	seq, ok := l.find(l.upstream(i).with("endpoints"))
	seq = resolve(seq)
	if !ok || idx == nil || seq == nil || seq.Kind != yaml.SequenceNode {
		for j, e := range decoded {
			items = append(items, endpointItem{l.endpoint(i, j), e})
		}
		return items
	}
	next := 0 // next decoded endpoint
	for j, item := range seq.Content {
		p := l.upstream(i).with("endpoints", j)
		if next < len(idx) && idx[next] == j {
			items = append(items, endpointItem{p, decoded[next]})
			next++
			continue
		}
		r := resolve(item)
		if r == nil || r.ShortTag() == "!!null" {
			continue
		}
		var e Endpoint
		switch r.Kind {
		case yaml.ScalarNode:
			e.Address = r.Value
		case yaml.MappingNode:
			e, _ = endpointFromMapping(r) // its problems are reported already
		default:
			continue
		}
		if !l.has(p.with("weight")) {
			e.Weight = DefaultWeight
		}
		items = append(items, endpointItem{p, e})
	}
	return items
}

// find returns the node at p and true, or the node of p's deepest ancestor present in the
// file and false. It returns nil without a document.
func (l *locator) find(p path) (*yaml.Node, bool) {
	if l == nil || l.root == nil {
		return nil, false
	}
	cur := l.root
	for _, e := range p {
		r := resolve(cur)
		if r == nil {
			return cur, false
		}
		var next *yaml.Node
		switch e := e.(type) {
		case string:
			if r.Kind == yaml.MappingNode {
				next = mapValue(r, e)
			}
		case int:
			if r.Kind == yaml.SequenceNode && e >= 0 && e < len(r.Content) {
				next = r.Content[e]
			}
		}
		if next == nil {
			return cur, false
		}
		cur = next
	}
	return cur, true
}

// line returns the line of p, or of its closest ancestor present in the file, or 0.
func (l *locator) line(p path) int {
	if n, _ := l.find(p); n != nil {
		return n.Line
	}
	return 0
}

// exactLine returns the line of p if p is in the file, else 0.
func (l *locator) exactLine(p path) int {
	if n, ok := l.find(p); ok {
		return n.Line
	}
	return 0
}

// has reports whether the key at p is in the file with a non-null value. Defaults use it
// to tell an explicit zero ("request_timeout: 0s") from an absent key.
func (l *locator) has(p path) bool {
	n, ok := l.find(p)
	if !ok {
		return false
	}
	r := resolve(n)
	return r != nil && !(r.Kind == yaml.ScalarNode && r.ShortTag() == "!!null")
}
