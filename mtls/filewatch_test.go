package mtls

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

// reports records a FileWatcher's onChange calls.
type reports struct {
	mu  sync.Mutex
	got []string
}

func (r *reports) add(why string) {
	r.mu.Lock()
	r.got = append(r.got, why)
	r.mu.Unlock()
}

func (r *reports) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// settle waits for at least want reports more than the already seen, then for the
// watcher to go quiet (five debounce periods without a report), and returns the new
// reports.
func (r *reports) settle(t *testing.T, already, want int, debounce time.Duration) []string {
	t.Helper()
	eventually(t, "a report", func() bool { return len(r.list()) >= already+want })
	for {
		n := len(r.list())
		time.Sleep(5 * debounce)
		if len(r.list()) == n {
			return r.list()[already:]
		}
	}
}

const testDebounce = 30 * time.Millisecond

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// startWatcher watches paths with polling disabled (unless poll is set), so that what is
// reported comes from change notifications.
func startWatcher(t *testing.T, paths []string, poll, debounce time.Duration) (*FileWatcher, *reports) {
	t.Helper()
	if poll == 0 {
		poll = -1
	}
	w, err := NewFileWatcher(FileWatchOptions{Paths: func() []string { return paths }, PollInterval: poll, Debounce: debounce})
	if err != nil {
		t.Fatalf("NewFileWatcher() error = %v", err)
	}
	r := &reports{}
	w.Start(r.add)
	t.Cleanup(func() { _ = w.Close() })
	return w, r
}

// k8sMount lays out dir as a Kubernetes secret volume: dir/name → ..data/name,
// ..data → ..<gen>/, and returns the path the application reads.
func k8sMount(t *testing.T, dir, gen, name, content string) string {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(dir, gen), 0o755))
	writeFile(t, filepath.Join(dir, gen, name), content)
	must(t, os.Symlink(gen, filepath.Join(dir, "..data")))
	must(t, os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)))
	return filepath.Join(dir, name)
}

// k8sSwap does what the kubelet does on a secret update: writes a new generation
// directory, points a temporary symlink at it, renames that over ..data and removes the
// old generation.
func k8sSwap(t *testing.T, dir, oldGen, newGen, name, content string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(dir, newGen), 0o755))
	writeFile(t, filepath.Join(dir, newGen, name), content)
	must(t, os.Symlink(newGen, filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(t, os.RemoveAll(filepath.Join(dir, oldGen)))
}

// TestFileWatcherChanges: every way a certificate file gets replaced is reported by
// the change notifications (polling is off), once or a bounded number of times, and
// nothing is reported while nothing changes.
func TestFileWatcherChanges(t *testing.T) {
	tests := []struct {
		name string
		// setup makes the files and returns the paths to watch.
		setup func(t *testing.T, dir string) []string
		// change changes them.
		change func(t *testing.T, dir string)
		// min and max bound the reports of one change.
		min, max int
	}{
		{
			name: "rewritten in place",
			setup: func(t *testing.T, dir string) []string {
				writeFile(t, filepath.Join(dir, "cert.pem"), "one")
				writeFile(t, filepath.Join(dir, "key.pem"), "one")
				return []string{filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")}
			},
			change: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "cert.pem"), "two")
				writeFile(t, filepath.Join(dir, "key.pem"), "two")
			},
			min: 1, max: 1,
		},
		{
			name: "replaced by rename",
			setup: func(t *testing.T, dir string) []string {
				writeFile(t, filepath.Join(dir, "cert.pem"), "one")
				return []string{filepath.Join(dir, "cert.pem")}
			},
			change: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "cert.pem.tmp"), "two")
				must(t, os.Rename(filepath.Join(dir, "cert.pem.tmp"), filepath.Join(dir, "cert.pem")))
			},
			min: 1, max: 1,
		},
		{
			name: "kubernetes ..data symlink swap",
			setup: func(t *testing.T, dir string) []string {
				return []string{k8sMount(t, dir, "..gen1", "cert.pem", "one")}
			},
			change: func(t *testing.T, dir string) {
				k8sSwap(t, dir, "..gen1", "..gen2", "cert.pem", "two")
			},
			min: 1, max: 1,
		},
		{
			name: "deleted then recreated",
			setup: func(t *testing.T, dir string) []string {
				writeFile(t, filepath.Join(dir, "cert.pem"), "one")
				return []string{filepath.Join(dir, "cert.pem")}
			},
			change: func(t *testing.T, dir string) {
				must(t, os.Remove(filepath.Join(dir, "cert.pem")))
				time.Sleep(3 * testDebounce) // the deletion is reported on its own
				writeFile(t, filepath.Join(dir, "cert.pem"), "two")
			},
			min: 2, max: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			paths := tt.setup(t, dir)
			_, r := startWatcher(t, paths, 0, testDebounce)
			time.Sleep(5 * testDebounce)
			if got := r.list(); len(got) != 0 {
				t.Fatalf("reports before any change = %v, want none", got)
			}
			tt.change(t, dir)
			got := r.settle(t, 0, tt.min, testDebounce)
			// A report may come late under load and split one change in two, so
			// allow one more than the ideal, no more.
			if len(got) < tt.min || len(got) > tt.max+1 {
				t.Errorf("reports = %v, want %d to %d", got, tt.min, tt.max+1)
			}
			for _, why := range got {
				if why != "change" {
					t.Errorf("report = %q, want change", why)
				}
			}
		})
	}
}

// TestFileWatcherRepeatedSymlinkSwaps: successive kubelet-style ..data swaps are each
// reported by notification (polling is off), even though every swap removes the
// directory the previous one pointed into.
func TestFileWatcherRepeatedSymlinkSwaps(t *testing.T) {
	dir := t.TempDir()
	path := k8sMount(t, dir, "..gen0", "tls.crt", "0")
	_, r := startWatcher(t, []string{path}, 0, testDebounce)
	seen := 0
	for i := 1; i <= 4; i++ {
		k8sSwap(t, dir, fmt.Sprintf("..gen%d", i-1), fmt.Sprintf("..gen%d", i), "tls.crt", strconv.Itoa(i))
		got := r.settle(t, seen, 1, testDebounce)
		if len(got) > 2 {
			t.Errorf("swap %d: reports = %v, want 1 or 2", i, got)
		}
		seen += len(got)
	}
}

// TestFileWatcherSymlinkRetarget: when a symlink is pointed at a file in another
// directory, the new directory is watched from the report of that change on, so an
// in-place write there is reported at once, without waiting for polling (off here).
// Before FileWatcher, the ingress certificates never watched the new directory and the
// mesh FileSource only did so at its next poll.
func TestFileWatcherSymlinkRetarget(t *testing.T) {
	root := t.TempDir()
	link := filepath.Join(root, "etc", "cert.pem")
	must(t, os.MkdirAll(filepath.Dir(link), 0o755))
	for _, d := range []string{"a", "b"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
		writeFile(t, filepath.Join(root, d, "cert.pem"), d)
	}
	must(t, os.Symlink(filepath.Join(root, "a", "cert.pem"), link))
	_, r := startWatcher(t, []string{link}, 0, testDebounce)

	must(t, os.Symlink(filepath.Join(root, "b", "cert.pem"), link+".tmp"))
	must(t, os.Rename(link+".tmp", link))
	seen := len(r.settle(t, 0, 1, testDebounce))

	writeFile(t, filepath.Join(root, "b", "cert.pem"), "b2")
	if got := r.settle(t, seen, 1, testDebounce); len(got) > 2 {
		t.Errorf("reports of a write in the new target directory = %v, want 1 or 2", got)
	}
	// The old target's directory is no longer watched.
	before := len(r.list())
	writeFile(t, filepath.Join(root, "a", "cert.pem"), "a2")
	time.Sleep(5 * testDebounce)
	if got := r.list()[before:]; len(got) != 0 {
		t.Errorf("reports of a write in the old target directory = %v, want none", got)
	}
}

// TestFileWatcherPolling: with notifications effectively off (a one-hour debounce), the
// re-stat reports a change once, as "poll", including of a file whose directory did
// not exist at start.
func TestFileWatcherPolling(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	path := filepath.Join(dir, "cert.pem")
	_, r := startWatcher(t, []string{path}, 10*time.Millisecond, time.Hour)
	time.Sleep(50 * time.Millisecond)
	if got := r.list(); len(got) != 0 {
		t.Fatalf("reports of a missing file = %v, want none", got)
	}
	must(t, os.MkdirAll(dir, 0o755))
	writeFile(t, path, "one")
	if got := r.settle(t, 0, 1, 10*time.Millisecond); !slices.Equal(got, []string{"poll"}) {
		t.Errorf("reports = %v, want [poll]", got)
	}
}

// TestFileWatcherChangeBeforeStart: a change between NewFileWatcher and Start (while
// the caller reads the files) is reported after Start, by notification and by polling.
func TestFileWatcherChangeBeforeStart(t *testing.T) {
	for _, tt := range []struct {
		name           string
		poll, debounce time.Duration
	}{
		{"notification", -1, testDebounce},
		{"polling", 10 * time.Millisecond, time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cert.pem")
			writeFile(t, path, "one")
			w, err := NewFileWatcher(FileWatchOptions{Paths: func() []string { return []string{path} },
				PollInterval: tt.poll, Debounce: tt.debounce})
			if err != nil {
				t.Fatalf("NewFileWatcher() error = %v", err)
			}
			defer w.Close()
			writeFile(t, path, "two!")
			r := &reports{}
			w.Start(r.add)
			if got := r.settle(t, 0, 1, 10*time.Millisecond); len(got) != 1 {
				t.Errorf("reports = %v, want 1", got)
			}
		})
	}
}

// TestFileWatcherWithoutNotifications: when fsnotify cannot be set up, the watcher
// relies on polling, or fails if polling is disabled. (The mesh FileSource used to fail
// in both cases; the ingress certificates already fell back to polling.)
func TestFileWatcherWithoutNotifications(t *testing.T) {
	broken := func() (*fsnotify.Watcher, error) { return nil, errors.New("too many open files") }
	path := filepath.Join(t.TempDir(), "cert.pem")
	writeFile(t, path, "one")
	paths := func() []string { return []string{path} }
	if _, err := newFileWatcher(FileWatchOptions{Paths: paths, PollInterval: -1}, broken); err == nil {
		t.Error("newFileWatcher(no notifications, no polling) error = nil, want one")
	}
	w, err := newFileWatcher(FileWatchOptions{Paths: paths, PollInterval: 10 * time.Millisecond}, broken)
	if err != nil {
		t.Fatalf("newFileWatcher(no notifications, polling) error = %v", err)
	}
	defer w.Close()
	r := &reports{}
	w.Start(r.add)
	writeFile(t, path, "two!")
	if got := r.settle(t, 0, 1, 10*time.Millisecond); !slices.Equal(got, []string{"poll"}) {
		t.Errorf("reports = %v, want [poll]", got)
	}
	if _, err := NewFileWatcher(FileWatchOptions{}); err == nil {
		t.Error("NewFileWatcher(no Paths) error = nil, want one")
	}
}

// TestFileWatcherClose: after Close nothing is reported and the goroutine is gone
// (goleak, in TestMain); Close is idempotent, also without Start, and Start after Close
// does nothing.
func TestFileWatcherClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cert.pem")
	writeFile(t, path, "one")
	w, r := startWatcher(t, []string{path}, 10*time.Millisecond, testDebounce)
	if err := w.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
	writeFile(t, path, "two!")
	time.Sleep(5 * testDebounce)
	if got := r.list(); len(got) != 0 {
		t.Errorf("reports after Close = %v, want none", got)
	}

	unstarted, err := NewFileWatcher(FileWatchOptions{Paths: func() []string { return []string{path} }})
	if err != nil {
		t.Fatalf("NewFileWatcher() error = %v", err)
	}
	if err := unstarted.Close(); err != nil {
		t.Errorf("Close() before Start = %v", err)
	}
	unstarted.Start(func(string) { t.Error("onChange called after Close") })
}
