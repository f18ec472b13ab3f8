package config

import (
	"path/filepath"
	"testing"
)

// TestExamplesAreValid loads every config under examples/, so that a schema change cannot
// leave the runnable examples broken.
func TestExamplesAreValid(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "examples", "*", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 8 {
		t.Fatalf("found %d example configs (%v), want the static, consul and tracing examples'", len(files), files)
	}
	for _, f := range files {
		t.Run(filepath.Base(filepath.Dir(f))+"/"+filepath.Base(f), func(t *testing.T) {
			if _, err := Load(f); err != nil {
				t.Errorf("Load(%s) error = %v", f, err)
			}
		})
	}
}
