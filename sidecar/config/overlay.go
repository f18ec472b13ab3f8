package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// overlayKeys are the top-level keys an overlay document may set: the mesh-wide part of
// the config, in schema order. Every other key stays with the local file. Read-only.
var overlayKeys = []string{"outbound", "upstreams", "policy"}

// Overlay is a parsed mesh-wide config document, such as the value of a Consul KV key:
// a YAML mapping holding any of outbound, upstreams and policy. Merged with a config file
// by ParseWithOverlay, each key it sets replaces the file's value for that key. An
// Overlay is immutable once returned by ParseOverlay and safe to share between
// goroutines.
type Overlay struct {
	source string
	index  uint64
	sum    string
	keys   []string
	root   *yaml.Node // nil for an empty document
	cfg    Config     // decoded, without defaults
}

// OverlayInfo says where the mesh-wide part of a Config came from. It is shown in
// /config_dump under config.overlay.
type OverlayInfo struct {
	// Source names the overlay in messages, e.g. "consul kv ferry/web".
	Source string `json:"source"`
	// ModifyIndex is the revision of the source (Consul's ModifyIndex of the key); 0 for
	// a document not read from Consul.
	ModifyIndex uint64 `json:"modify_index"`
	// Version is the first 12 hex digits of the SHA-256 of the document.
	Version string `json:"version"`
	// Keys are the top-level keys taken from the overlay; every other key comes from
	// the file.
	Keys []string `json:"keys"`
	// FileVersion is the version of the file the overlay was merged with.
	FileVersion string `json:"file_version"`
}

// Source returns the name the overlay's messages use, e.g. "consul kv ferry/web". The
// accessors of Overlay only read it and are safe to call concurrently.
func (o *Overlay) Source() string { return o.source }

// Index returns the revision given to ParseOverlay (Consul's ModifyIndex).
func (o *Overlay) Index() uint64 { return o.index }

// Version returns the first 12 hex digits of the SHA-256 of the document.
func (o *Overlay) Version() string { return o.sum }

// Keys returns the top-level keys the document sets, in schema order; empty for a
// document that sets nothing (an empty value or only comments).
func (o *Overlay) Keys() []string { return slices.Clone(o.keys) }

// ParseOverlay parses a mesh-wide config document. source names it in messages (errors
// read "source:line: path: msg"); revision is its revision (Consul's ModifyIndex; 0 if
// none). It checks what can be checked without the file: YAML syntax, one document, a
// mapping whose keys are only outbound, upstreams and policy, and strict decoding of
// those keys (unknown keys, wrong types, bad durations), all with their lines. Semantic
// validation needs the file and is done by ParseWithOverlay. An empty document (or one
// holding only comments) is valid and sets nothing. It is safe to call concurrently.
func ParseOverlay(source string, revision uint64, data []byte) (*Overlay, error) {
	col := &collector{file: source, loc: &locator{}}
	sum := sha256.Sum256(data)
	o := &Overlay{source: source, index: revision, sum: hex.EncodeToString(sum[:])[:12]}
	if len(data) > MaxFileSize {
		col.fail(0, nil, fmt.Sprintf("document is larger than %d MiB", MaxFileSize>>20))
		return nil, col.result()
	}
	root, ok := decodeDocument(col, data, &o.cfg)
	if root == nil {
		if err := col.result(); err != nil {
			return nil, err
		}
		return o, nil // empty: sets nothing
	}
	if r := resolve(root); r == nil || r.Kind != yaml.MappingNode {
		// decodeDocument reported it already ("want a mapping").
		return nil, col.result()
	}
	// Only the mesh-wide keys may be set. Problems the decoder found at or below any
	// other key are replaced by one message naming the key.
	var refused []entry
	for _, e := range index(root) {
		if e.key && len(e.p) == 1 && !isMerge(e.n) && !slices.Contains(overlayKeys, e.p[0].(string)) {
			refused = append(refused, e)
		}
	}
	if len(refused) > 0 {
		kept := col.errs[:0]
		for _, e := range col.errs {
			if !slices.ContainsFunc(refused, func(r entry) bool { return under(e.Path, r.p.String()) }) {
				kept = append(kept, e)
			}
		}
		col.errs = kept
		for _, r := range refused {
			msg := "unknown key"
			if _, known := fieldByKey(reflect.TypeFor[Config](), r.p[0].(string)); known {
				msg = "not a mesh-wide key: it stays in the local file"
			}
			col.fail(r.n.Line, r.p, msg+" (the document may hold only "+strings.Join(overlayKeys, ", ")+")")
		}
	}
	if err := col.result(); err != nil {
		return nil, err
	}
	if !ok {
		return nil, Errors{{File: source, Msg: "document cannot be decoded"}}
	}
	l := &locator{root: root}
	for _, k := range overlayKeys {
		if _, found := l.find(path{k}); found {
			o.keys = append(o.keys, k)
		}
	}
	o.root = root
	return o, nil
}

// decodeDocument reads data as one YAML document and decodes it strictly into c,
// recording every problem in col. It returns the document's top node (nil for an empty
// document, which it does not report) and whether decoding left c usable for validation
// (no problem made the whole document unreliable).
func decodeDocument(col *collector, data []byte, c *Config) (*yaml.Node, bool) {
	text, err := utf8Text(data)
	if err != nil {
		col.fail(1, nil, err.Error())
		return nil, false
	}
	docs, first, err := documents(text)
	if err != nil {
		col.syntax(err, text)
	}
	if len(docs) == 0 {
		return nil, false
	}
	if len(docs) > 1 {
		col.fail(docs[1].Line, nil, "multiple YAML documents (want one)")
	}
	root := docs[0]
	if err := decodeStrict(text, first, c); err != nil {
		col.decodeError(err, root)
	}
	return root, !col.brokenUnder(nil)
}

// LoadWithOverlay reads the config file at path and merges ov into it; see
// ParseWithOverlay. It is safe to call concurrently.
func LoadWithOverlay(path string, ov *Overlay) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, readError(path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, readError(path, err)
	}
	return ParseWithOverlay(path, data, ov)
}

// ParseWithOverlay parses a config file's contents as Parse does, with each top-level key
// that ov sets replacing the file's value for that key; a nil ov, or one that sets
// nothing, is Parse. The merged config gets the file's defaults and validation: every
// problem is reported with the line of the document it is in, "file:line: ..." for the
// file's keys and "source:line: ..." (e.g. "consul kv ferry/web:12: ...") for the
// overlay's. Problems in the file's values of keys the overlay replaces are not
// reported (those values are not used). The Config's Version is the file's version
// joined to the overlay's ("<file>+<overlay>"), and Overlay says where each part came
// from. It is safe to call concurrently.
func ParseWithOverlay(file string, data []byte, ov *Overlay) (*Config, error) {
	if ov == nil || len(ov.keys) == 0 {
		c, err := Parse(file, data)
		if err != nil || ov == nil {
			return c, err
		}
		c.Overlay = ov.info(c.Version)
		c.Version += "+" + ov.sum
		return c, nil
	}
	col := &collector{file: file, loc: &locator{}}
	if len(data) > MaxFileSize {
		col.fail(0, nil, fmt.Sprintf("file is larger than %d MiB", MaxFileSize>>20))
		return nil, col.result()
	}
	var c Config
	fileRoot, _ := decodeDocument(col, data, &c)
	if fileRoot == nil {
		if len(col.errs) == 0 {
			col.fail(1, nil, "empty config (want at least service, outbound and upstreams)")
		}
		return nil, col.result()
	}
	fromOverlay := func(p string) bool {
		return slices.ContainsFunc(ov.keys, func(k string) bool { return under(p, k) })
	}
	// Drop what the file says about the keys the overlay replaces.
	kept := col.errs[:0]
	for _, e := range col.errs {
		if !fromOverlay(e.Path) || e.Path == "" {
			kept = append(kept, e)
		}
	}
	col.errs = kept
	for b := range col.broken {
		if b != "" && fromOverlay(b) {
			delete(col.broken, b)
		}
	}
	if !col.brokenUnder(nil) {
		root := mergeRoots(fileRoot, ov)
		for _, k := range ov.keys {
			switch k {
			case "outbound":
				c.Outbound = ov.cfg.Outbound
			case "upstreams":
				c.Upstreams = ov.cfg.Upstreams
			case "policy":
				c.Policy = ov.cfg.Policy
			}
		}
		n := len(col.errs)
		col.loc = newLocator(root, &c)
		applyDefaults(&c, col.loc)
		validate(&c, col)
		for _, e := range col.errs[n:] {
			if e.Path != "" && fromOverlay(e.Path) {
				e.File = ov.source
			}
		}
	}
	if err := col.result(); err != nil {
		es := err.(Errors)
		// The file's problems first, then the overlay's, each by line.
		sort.SliceStable(es, func(i, j int) bool { return es[i].File == file && es[j].File != file })
		return nil, es
	}
	c.File = file
	sum := sha256.Sum256(data)
	fileVersion := hex.EncodeToString(sum[:])[:12]
	c.Overlay = ov.info(fileVersion)
	c.Version = fileVersion + "+" + ov.sum
	return &c, nil
}

// info describes ov merged with a file of version fileVersion.
func (o *Overlay) info(fileVersion string) *OverlayInfo {
	return &OverlayInfo{Source: o.source, ModifyIndex: o.index, Version: o.sum, Keys: o.Keys(), FileVersion: fileVersion}
}

// mergeRoots returns a mapping node with the file's top-level entries, except that each
// key the overlay sets maps to the overlay's node. Nodes keep their own lines, so the
// locator finds lines in the document each value came from.
func mergeRoots(fileRoot *yaml.Node, ov *Overlay) *yaml.Node {
	merged := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: fileRoot.Line, Column: fileRoot.Column}
	l := &locator{root: ov.root}
	for _, k := range ov.keys {
		v, _ := l.find(path{k})
		merged.Content = append(merged.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k, Line: v.Line}, v)
	}
	r := resolve(fileRoot)
	if r == nil || r.Kind != yaml.MappingNode {
		return merged
	}
	for i := 0; i+1 < len(r.Content); i += 2 {
		k := r.Content[i]
		if !isMerge(k) && k.Kind == yaml.ScalarNode && slices.Contains(ov.keys, k.Value) {
			continue
		}
		merged.Content = append(merged.Content, k, r.Content[i+1])
	}
	return merged
}
