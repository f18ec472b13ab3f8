package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateKVFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file := write("ferry.yaml", `service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
discovery:
  consul: {config_key: ferry/web}
`)
	tests := []struct {
		name     string
		kv       string
		wantCode int
		wantOut  string // in stdout (code 0) or stderr (code 1)
	}{
		{"valid document", "upstreams:\n  - {name: api, endpoints: [127.0.0.1:9001]}\n", 0, "kv.yaml merged into " + file + ": ok"},
		{"empty document", "# nothing\n", 0, "sets nothing (empty document)"},
		{"invalid upstream", "upstreams:\n  - name: api\n    endpoints: [127.0.0.1:9001]\n    lb: fastest\n", 1, "kv.yaml:4: upstreams[0].lb: unknown policy"},
		{"file-only key", "\nservice: other\n", 1, "kv.yaml:2: service: not a mesh-wide key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv := write("kv.yaml", tt.kv)
			var stdout, stderr bytes.Buffer
			code := run([]string{"validate", "--config", file, "--kv-file", kv}, &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("validate = %d, want %d; stdout %q, stderr %q", code, tt.wantCode, stdout.String(), stderr.String())
			}
			out := stdout.String()
			if code != 0 {
				out = stderr.String()
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Errorf("validate output = %q, want it to contain %q", out, tt.wantOut)
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"validate", "--config", file, "--kv-file", filepath.Join(dir, "missing.yaml")}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "missing.yaml") {
		t.Errorf("validate with a missing --kv-file = %d, %q; want 1 and a message naming it", code, stderr.String())
	}
}

func TestRunMissingConfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"run", "--config", missing}, &stdout, &stderr); code != 1 {
		t.Fatalf("run with a missing config = %d, want 1", code)
	}
	if want := missing + ": cannot read config: open: no such file or directory"; !strings.Contains(stderr.String(), want) {
		t.Errorf("run with a missing config printed %q, want %q", stderr.String(), want)
	}
}

func TestValidatePrintsWarnings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(file, []byte(`service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
policy: {access: {default: deny}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"validate", "--config", file}, &stdout, &stderr); code != 0 {
		t.Fatalf("validate = %d, want 0 (warnings are not errors); stderr %q", code, stderr.String())
	}
	for _, want := range []string{
		file + ": warning: no mtls block: traffic between sidecars is plaintext\n",
		file + ": warning: policy: there is no inbound or ingress listener, so nothing enforces this policy",
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("validate output = %q, want it to contain %q", stdout.String(), want)
		}
	}
}
