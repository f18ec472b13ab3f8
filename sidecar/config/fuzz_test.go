package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParse feeds arbitrary bytes to Parse. Parse must not panic; a failure must be a
// non-empty Errors whose lines lie in the file; a success must re-validate and survive a
// round trip through yaml.Marshal unchanged (so defaults are idempotent and every value
// Parse accepts can be written back). Seeds: the files in testdata and a few tricky
// documents.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"",
		"---\n---\n",
		"service: web\noutbound: [5, {upstream: a}]\nupstreams: [x, {name: a, endpoints: [[1], {weight: 0}]}]\n",
		"service: &s web\nadmin: {<<: {address: *s}}\noutbound: [{<<: [{upstream: a}], address: ':1'}]\nupstreams: [{name: a, endpoints: [a:1], request_timeout: !!null 1s}]\n",
		"service: web\nupstreams:\n  - &u {name: a, endpoints: [a:1]}\n  - *u\n",
		"a: {a: 1, a: 2}\nservice: x\nservice: y\n",
		"inbound: ~\nadmin: ~\noutbound: [~]\nupstreams: [{endpoints: [~, {address: ~, weight: ~}]}]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			if c != nil {
				t.Fatalf("Parse() = %+v, %v, want a nil config with an error", c, err)
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("Parse() error = %T %v, want non-empty config.Errors", err, err)
			}
			text, err := utf8Text(data)
			if err != nil {
				text = data
			}
			lines := countLines(text)
			for _, e := range errs {
				if e.File != "fuzz.yaml" || e.Msg == "" || e.Line < 0 || e.Line > lines {
					t.Errorf("Parse() error %q: want file fuzz.yaml, a message and a line in 0..%d", e, lines)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Validate() of a parsed config = %v\ninput:\n%s", err, data)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("yaml.Marshal() error = %v", err)
		}
		again, err := Parse("fuzz.yaml", out)
		if err != nil {
			t.Fatalf("Parse(yaml.Marshal(c)) error = %v\ninput:\n%s\nmarshaled:\n%s", err, data, out)
		}
		again.Version = c.Version
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("Parse(yaml.Marshal(c)) =\n%+v\nwant\n%+v\nmarshaled:\n%s", again, c, out)
		}
	})
}
