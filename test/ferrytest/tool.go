package ferrytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Tool returns the path of a real component's binary that `make deps` builds, failing t if
// there is none: $env when set (it must exist), else <repo>/.deps/bin/NAME, else NAME on
// PATH. makeTarget names the make target that builds it, for the failure message.
func Tool(t testing.TB, env, name, makeTarget string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", env, p, err)
		}
		return p
	}
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, ".deps", "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("no %s binary (looked at $%s, <repo>/.deps/bin/%s and PATH): run make %s", name, env, name, makeTarget)
	return ""
}
