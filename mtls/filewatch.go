package mtls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// FileWatchOptions configures a FileWatcher.
type FileWatchOptions struct {
	// Paths returns the files to watch. It is called from the watcher's goroutine (and
	// once by NewFileWatcher) each time the watches are refreshed, so it must be safe
	// to call concurrently with the caller's own code.
	Paths func() []string
	// PollInterval is how often the files are re-stat'ed in case a change notification
	// was missed (DefaultPollInterval if zero; negative disables polling).
	PollInterval time.Duration
	// Debounce is how long to wait after a change notification before reporting it, so
	// that a burst of writes (certificate, then key) is reported once (DefaultDebounce
	// if zero or negative).
	Debounce time.Duration
	// Logger receives watch problems (a directory that cannot be watched, watcher
	// errors); nil discards them.
	Logger *slog.Logger
}

// FileWatcher reports changes to a set of files, such as a certificate, its key and a
// trust bundle. It watches, with fsnotify, the directory of every file and of every
// file's symlink target, which covers in-place writes, a new file renamed over the old
// one, a file deleted and created again, and Kubernetes' atomic swap of a `..data`
// symlink; the symlink targets are resolved again after every change. A periodic
// re-stat (os.SameFile, modification time, size) catches what the notifications miss,
// and is all there is if fsnotify cannot be set up. Notifications are debounced.
//
// Changes are reported by calling onChange (given to Start) from the watcher's own
// goroutine, one call at a time, with why: "change" after a notification, "poll" when
// the re-stat found a difference. A report may be spurious (a file touched but not
// changed); callers compare what they read. Start and Close are safe to call
// concurrently.
type FileWatcher struct {
	opts   FileWatchOptions
	log    *slog.Logger
	notify *fsnotify.Watcher // nil when notifications are unavailable: polling only

	// Touched only by NewFileWatcher and then by the run goroutine.
	stats   map[string]os.FileInfo // at the last report (or NewFileWatcher)
	watched map[string]bool        // directories with an fsnotify watch

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex // guards started and closed
	started bool
	closed  bool
}

// NewFileWatcher starts watching the files of opts.Paths and records their state; nothing
// is reported until Start. Changes made between the two are reported after Start, so a
// caller can create the watcher, read the files, then Start. It fails only for invalid
// options, or when change notifications cannot be set up and polling is disabled;
// with polling enabled it then logs the problem and relies on polling.
func NewFileWatcher(opts FileWatchOptions) (*FileWatcher, error) {
	return newFileWatcher(opts, fsnotify.NewWatcher)
}

func newFileWatcher(opts FileWatchOptions, newNotify func() (*fsnotify.Watcher, error)) (*FileWatcher, error) {
	if opts.Paths == nil {
		return nil, errors.New("mtls: file watcher needs the paths to watch")
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &FileWatcher{opts: opts, log: log, stats: map[string]os.FileInfo{}, watched: map[string]bool{},
		done: make(chan struct{})}
	n, err := newNotify()
	switch {
	case err != nil && opts.PollInterval < 0:
		return nil, fmt.Errorf("mtls: watching certificate files: %w", err)
	case err != nil:
		log.Warn("cannot watch certificate files; relying on polling", "error", err)
	default:
		w.notify = n
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	w.updateWatches()
	w.statAll()
	return w, nil
}

// Start begins reporting changes to onChange. Only the first call has an effect, and
// none after Close.
func (w *FileWatcher) Start(onChange func(why string)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started || w.closed {
		return
	}
	w.started = true
	go w.run(onChange)
}

// Close stops the watcher and waits for its goroutine to finish (including an onChange
// call in progress, so onChange must not wait for Close). It returns the error of
// closing the fsnotify watcher, if any; calls after the first return nil.
func (w *FileWatcher) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	started := w.started
	w.mu.Unlock()
	w.cancel()
	var err error
	if w.notify != nil {
		err = w.notify.Close()
	}
	if started {
		<-w.done
	}
	return err
}

func (w *FileWatcher) run(onChange func(why string)) {
	defer close(w.done)
	var poll <-chan time.Time
	if w.opts.PollInterval > 0 {
		t := time.NewTicker(w.opts.PollInterval)
		defer t.Stop()
		poll = t.C
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w.notify != nil {
		events, errs = w.notify.Events, w.notify.Errors
	}
	for {
		select {
		case <-w.ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Op&(fsnotify.Create|fsnotify.Write|fsnotify.Remove|fsnotify.Rename) != 0 {
				debounce.Reset(w.opts.Debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			w.log.Warn("certificate file watcher", "error", err)
		case <-debounce.C:
			// A symlink may now point into another directory.
			w.updateWatches()
			w.statAll()
			onChange("change")
		case <-poll:
			// A watched directory may have been replaced, or a symlink may now
			// point elsewhere.
			w.updateWatches()
			if w.statChanged() {
				w.statAll()
				onChange("poll")
			}
		}
	}
}

// statAll records the files' current state, to compare the next poll with.
func (w *FileWatcher) statAll() {
	clear(w.stats)
	for _, p := range w.opts.Paths() {
		if fi, err := os.Stat(p); err == nil {
			w.stats[p] = fi
		} else {
			w.stats[p] = nil
		}
	}
}

// statChanged reports whether any file differs from the recorded state.
func (w *FileWatcher) statChanged() bool {
	paths := w.opts.Paths()
	if len(paths) != len(w.stats) {
		return true
	}
	for _, p := range paths {
		prev, known := w.stats[p]
		if !known {
			return true
		}
		fi, err := os.Stat(p)
		switch {
		case err != nil && prev == nil:
		case err != nil || prev == nil:
			return true
		case !os.SameFile(fi, prev) || !fi.ModTime().Equal(prev.ModTime()) || fi.Size() != prev.Size():
			return true
		}
	}
	return false
}

// updateWatches watches the directory of every file and of every symlink target, and
// stops watching directories no longer among them.
func (w *FileWatcher) updateWatches() {
	if w.notify == nil {
		return
	}
	want := map[string]bool{}
	for _, p := range w.opts.Paths() {
		want[filepath.Dir(p)] = true
		if real, err := filepath.EvalSymlinks(p); err == nil {
			want[filepath.Dir(real)] = true
		}
	}
	for dir := range w.watched {
		if !want[dir] {
			_ = w.notify.Remove(dir)
			delete(w.watched, dir)
		}
	}
	for dir := range want {
		// Add again even if already watched: a directory that was removed and
		// recreated has lost its watch.
		if err := w.notify.Add(dir); err != nil {
			if w.watched[dir] || !errors.Is(err, os.ErrNotExist) {
				w.log.Warn("cannot watch certificate directory; relying on polling", "dir", dir, "error", err)
			}
			delete(w.watched, dir)
			continue
		}
		w.watched[dir] = true
	}
}
