package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const overlayFile = `service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081]
    lb: least_request
policy:
  access: {default: allow}
`

const kvSource = "consul kv ferry/web"

func TestParseWithOverlay(t *testing.T) {
	tests := []struct {
		name     string
		kv       string
		keys     []string
		check    func(t *testing.T, c *Config)
		wantFile bool // the result equals the file alone (but for Overlay/Version)
	}{
		{
			name: "upstreams replaced, outbound kept",
			kv: `# mesh-wide
upstreams:
  - name: api
    endpoints: [127.0.0.1:9001, 127.0.0.1:9002]
`,
			keys: []string{"upstreams"},
			check: func(t *testing.T, c *Config) {
				u := c.Upstream("api")
				if u == nil || len(u.Endpoints) != 2 || u.Endpoints[0].Address != "127.0.0.1:9001" {
					t.Fatalf("Upstream(api) = %+v, want the KV's two endpoints", u)
				}
				// The KV's upstream gets the file's defaults, not the file's settings.
				if u.LB != DefaultLB {
					t.Errorf("Upstream(api).LB = %q, want the default %q (the file's least_request is replaced)", u.LB, DefaultLB)
				}
				if u.Endpoints[1].Weight != DefaultWeight || u.RequestTimeout.D() != DefaultRequestTimeout {
					t.Errorf("Upstream(api) = %+v, want defaults applied", u)
				}
				if len(c.Outbound) != 1 || c.Outbound[0].Address != "127.0.0.1:9191" {
					t.Errorf("Outbound = %+v, want the file's", c.Outbound)
				}
			},
		},
		{
			name: "outbound and upstreams replaced together",
			kv: `outbound: [{upstream: db, address: 127.0.0.1:15432, protocol: tcp}]
upstreams: [{name: db, endpoints: [127.0.0.1:5432]}]
`,
			keys: []string{"outbound", "upstreams"},
			check: func(t *testing.T, c *Config) {
				if len(c.Outbound) != 1 || c.Outbound[0].Upstream != "db" || c.Outbound[0].Protocol != ProtocolTCP {
					t.Errorf("Outbound = %+v, want the KV's db listener", c.Outbound)
				}
				if c.Outbound[0].IdleTimeout.D() != DefaultTCPIdleTimeout {
					t.Errorf("Outbound[0].IdleTimeout = %v, want %v", c.Outbound[0].IdleTimeout, DefaultTCPIdleTimeout)
				}
				if c.Upstream("api") != nil || c.Upstream("db") == nil {
					t.Errorf("Upstreams = %+v, want only db", c.Upstreams)
				}
			},
		},
		{
			name: "policy replaced",
			kv:   "policy:\n  access: {default: deny}\n",
			keys: []string{"policy"},
			check: func(t *testing.T, c *Config) {
				if c.Policy.Access.Default != "deny" {
					t.Errorf("Policy.Access.Default = %q, want deny", c.Policy.Access.Default)
				}
				if u := c.Upstream("api"); u == nil || u.LB != "least_request" {
					t.Errorf("Upstream(api) = %+v, want the file's", u)
				}
			},
		},
		{
			name:     "empty document sets nothing",
			kv:       "# nothing yet\n",
			keys:     nil,
			wantFile: true,
		},
		{
			name: "upstreams given through a merge key",
			kv:   "<<: {upstreams: [{name: api, endpoints: [127.0.0.1:7000]}]}\n",
			keys: []string{"upstreams"},
			check: func(t *testing.T, c *Config) {
				if u := c.Upstream("api"); u == nil || u.Endpoints[0].Address != "127.0.0.1:7000" {
					t.Errorf("Upstream(api) = %+v, want the merged KV endpoint", u)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ov, err := ParseOverlay(kvSource, 42, []byte(tt.kv))
			if err != nil {
				t.Fatalf("ParseOverlay() error = %v", err)
			}
			if got := ov.Keys(); !slices.Equal(got, tt.keys) {
				t.Errorf("Keys() = %v, want %v", got, tt.keys)
			}
			c, err := ParseWithOverlay("ferry.yaml", []byte(overlayFile), ov)
			if err != nil {
				t.Fatalf("ParseWithOverlay() error = %v", err)
			}
			file, err := Parse("ferry.yaml", []byte(overlayFile))
			if err != nil {
				t.Fatal(err)
			}
			if c.Overlay == nil || c.Overlay.Source != kvSource || c.Overlay.ModifyIndex != 42 ||
				!slices.Equal(c.Overlay.Keys, tt.keys) || c.Overlay.FileVersion != file.Version {
				t.Errorf("Overlay = %+v, want source %q, index 42, keys %v, file version %s", c.Overlay, kvSource, tt.keys, file.Version)
			}
			if want := file.Version + "+" + ov.Version(); c.Version != want {
				t.Errorf("Version = %q, want %q", c.Version, want)
			}
			if c.File != "ferry.yaml" {
				t.Errorf("File = %q, want ferry.yaml", c.File)
			}
			if tt.wantFile {
				c.Overlay, c.Version = nil, file.Version
				if a, b := dump(t, c), dump(t, file); a != b {
					t.Errorf("ParseWithOverlay() = %s, want the file alone %s", a, b)
				}
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// dump renders c for comparisons.
func dump(t *testing.T, c *Config) string {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseOverlayErrors(t *testing.T) {
	tests := []struct {
		name string
		kv   string
		want []string
	}{
		{
			name: "keys that stay in the file",
			kv: `upstreams: [{name: api, endpoints: [127.0.0.1:9001]}]
service: other
admin: {address: 5}
`,
			want: []string{
				`consul kv ferry/web:2: service: not a mesh-wide key: it stays in the local file (the document may hold only outbound, upstreams, policy)`,
				`consul kv ferry/web:3: admin: not a mesh-wide key: it stays in the local file (the document may hold only outbound, upstreams, policy)`,
			},
		},
		{
			name: "unknown top-level key",
			kv:   "\n\nupstreamz: []\n",
			want: []string{`consul kv ferry/web:3: upstreamz: unknown key (the document may hold only outbound, upstreams, policy)`},
		},
		{
			name: "unknown key inside an upstream",
			kv:   "upstreams:\n  - name: api\n    endpoint: [127.0.0.1:1]\n",
			want: []string{`consul kv ferry/web:3: upstreams[0].endpoint: unknown key (known keys: `},
		},
		{
			name: "bad duration",
			kv:   "upstreams:\n  - name: api\n    endpoints: [127.0.0.1:1]\n    connect_timeout: soon\n",
			want: []string{`consul kv ferry/web:4: upstreams[0].connect_timeout: invalid duration "soon"`},
		},
		{
			name: "not a mapping",
			kv:   "- upstreams\n",
			want: []string{`consul kv ferry/web:1: want a mapping, got a list`},
		},
		{
			name: "syntax",
			kv:   "upstreams: [\n",
			want: []string{`consul kv ferry/web:`, `invalid YAML`},
		},
		{
			name: "two documents",
			kv:   "upstreams: []\n---\npolicy: {}\n",
			want: []string{`consul kv ferry/web:3: multiple YAML documents (want one)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ov, err := ParseOverlay(kvSource, 1, []byte(tt.kv))
			if err == nil {
				t.Fatalf("ParseOverlay() = %+v, want errors %q", ov, tt.want)
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("ParseOverlay() error = %T, want Errors", err)
			}
			got := err.Error()
			lines := strings.Split(got, "\n")
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("ParseOverlay() error = %q, want it to contain %q", got, w)
				}
			}
			if len(lines) != len(tt.want) && tt.name != "syntax" {
				t.Errorf("ParseOverlay() error = %q, want %d problems", got, len(tt.want))
			}
			for _, e := range es {
				if e.File != kvSource {
					t.Errorf("ParseOverlay() error %q names %q, want %q", e, e.File, kvSource)
				}
			}
		})
	}
}

func TestParseWithOverlayErrors(t *testing.T) {
	tests := []struct {
		name string
		file string
		kv   string
		want []string // whole lines of the error, in order
	}{
		{
			name: "invalid upstream in the KV",
			file: overlayFile,
			kv: `upstreams:
  - name: api
    endpoints: [127.0.0.1:9001]
    lb: fastest
  - name: db
    endpoints: ["nohost"]
`,
			want: []string{
				`consul kv ferry/web:4: upstreams[0].lb: unknown policy "fastest"`,
				`consul kv ferry/web:6: upstreams[1].endpoints[0]: invalid endpoint address "nohost": missing port`,
			},
		},
		{
			name: "file outbound names an upstream the KV drops",
			file: overlayFile,
			kv:   "upstreams: [{name: db, endpoints: [127.0.0.1:5432]}]\n",
			want: []string{`ferry.yaml:3: outbound[0].upstream: unknown upstream "api" (have db)`},
		},
		{
			name: "KV outbound clashes with the file's admin address",
			file: "admin: {address: 127.0.0.1:9901}\n" + overlayFile,
			kv:   "outbound:\n  - {upstream: api, address: 127.0.0.1:9901}\n",
			want: []string{`consul kv ferry/web:2: outbound[0].address: `},
		},
		{
			name: "problems in replaced file keys are not reported",
			file: "service: web\noutbound: [{upstream: api, address: 127.0.0.1:9191}]\nupstreams:\n  - {name: api, lb: bogus, connect_timeout: never}\n",
			kv:   "upstreams:\n  - name: api\n    endpoints: [127.0.0.1:9001]\n    retries: {attempts: -1}\n",
			want: []string{`consul kv ferry/web:4: upstreams[0].retries.attempts: `},
		},
		{
			name: "file problems and KV problems, file first",
			file: "service: web\noutbound: [{upstream: api, address: 127.0.0.1:9191}]\ndrain_timeout: -1s\nupstreams: []\n",
			kv:   "upstreams:\n  - {name: api, endpoints: [127.0.0.1:9001], healthy_panic_threshold: 101}\n",
			want: []string{
				`ferry.yaml:3: drain_timeout: `,
				`consul kv ferry/web:2: upstreams[0].healthy_panic_threshold: `,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ov, err := ParseOverlay(kvSource, 7, []byte(tt.kv))
			if err != nil {
				t.Fatalf("ParseOverlay() error = %v", err)
			}
			c, err := ParseWithOverlay("ferry.yaml", []byte(tt.file), ov)
			if err == nil {
				t.Fatalf("ParseWithOverlay() = %+v, want errors %q", c, tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("ParseWithOverlay() error =\n%s\nwant %d lines starting %q", err, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("ParseWithOverlay() error line %d = %q, want it to start with %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestLoadWithOverlay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(path, []byte(overlayFile), 0o600); err != nil {
		t.Fatal(err)
	}
	ov, err := ParseOverlay(kvSource, 3, []byte("upstreams: [{name: api, endpoints: [127.0.0.1:9009]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := LoadWithOverlay(path, ov)
	if err != nil {
		t.Fatalf("LoadWithOverlay() error = %v", err)
	}
	if got := c.Upstream("api").Endpoints[0].Address; got != "127.0.0.1:9009" {
		t.Errorf("LoadWithOverlay() api endpoint = %q, want 127.0.0.1:9009", got)
	}
	// A nil overlay is Load.
	c, err = LoadWithOverlay(path, nil)
	if err != nil || c.Overlay != nil || c.Upstream("api").Endpoints[0].Address != "127.0.0.1:8081" {
		t.Errorf("LoadWithOverlay(nil) = %+v, %v, want the file alone", c, err)
	}
	if _, err := LoadWithOverlay(filepath.Join(dir, "missing.yaml"), ov); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("LoadWithOverlay(missing) error = %v, want one naming the file", err)
	}
}

func TestConfigKey(t *testing.T) {
	tests := []struct {
		key     string
		wantErr bool
	}{
		{"ferry/web", false},
		{"ferry", false},
		{"mesh/ferry/web-v2", false},
		{"/ferry/web", true},
		{"ferry/web/", true},
		{"ferry web", true},
		{"ferry/\\tweb", true},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			doc := overlayFile + "discovery:\n  consul:\n    config_key: \"" + tt.key + "\"\n"
			c, err := Parse("ferry.yaml", []byte(doc))
			if tt.wantErr {
				want := `ferry.yaml:12: discovery.consul.config_key: invalid KV key`
				if err == nil || !strings.HasPrefix(err.Error(), want) {
					t.Errorf("Parse(config_key %q) error = %v, want %q...", tt.key, err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(config_key %q) error = %v", tt.key, err)
			}
			if got := c.Discovery.Consul.ConfigKey; got != tt.key {
				t.Errorf("ConfigKey = %q, want %q", got, tt.key)
			}
		})
	}
}

// FuzzParseWithOverlay feeds arbitrary bytes as the KV document merged into a valid file.
// Neither ParseOverlay nor ParseWithOverlay may panic; every problem must name the file or
// the document, with a message and a line within the document it names; a success must
// re-validate and take from the document exactly the keys it reports.
func FuzzParseWithOverlay(f *testing.F) {
	for _, s := range []string{
		"",
		"upstreams: [{name: api, endpoints: [127.0.0.1:9001]}]\n",
		"outbound: [{upstream: db, address: 127.0.0.1:15432, protocol: tcp}]\nupstreams: [{name: db, endpoints: [127.0.0.1:5432]}]\n",
		"policy: {access: {default: deny}}\n",
		"<<: {upstreams: []}\nservice: x\n",
		"upstreams: &u [{name: api, endpoints: [a:1]}]\noutbound: *u\n",
		"upstreams: ~\n",
		"- a\n",
		"upstreams: [\n",
	} {
		f.Add([]byte(s))
	}
	fileLines := countLines([]byte(overlayFile))
	f.Fuzz(func(t *testing.T, data []byte) {
		ov, err := ParseOverlay(kvSource, 1, data)
		if err == nil {
			var c *Config
			c, err = ParseWithOverlay("ferry.yaml", []byte(overlayFile), ov)
			if err == nil {
				if err := c.Validate(); err != nil {
					t.Fatalf("Validate() of a merged config = %v\ndocument:\n%s", err, data)
				}
				if c.Overlay == nil || !slices.Equal(c.Overlay.Keys, ov.Keys()) {
					t.Fatalf("Overlay = %+v, want keys %v", c.Overlay, ov.Keys())
				}
				return
			}
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error = %T %v, want non-empty config.Errors", err, err)
		}
		text, terr := utf8Text(data)
		if terr != nil {
			text = data
		}
		kvLines := countLines(text)
		for _, e := range errs {
			switch {
			case e.Msg == "":
				t.Errorf("error %q has no message", e)
			case e.File == kvSource && (e.Line < 0 || e.Line > kvLines):
				t.Errorf("error %q: line outside the document's 0..%d", e, kvLines)
			case e.File == "ferry.yaml" && (e.Line < 0 || e.Line > fileLines):
				t.Errorf("error %q: line outside the file's 0..%d", e, fileLines)
			case e.File != kvSource && e.File != "ferry.yaml":
				t.Errorf("error %q names neither the file nor the document", e)
			}
		}
	})
}
