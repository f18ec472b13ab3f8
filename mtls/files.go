package mtls

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for FileOptions and FileWatchOptions.
const (
	DefaultPollInterval = 30 * time.Second
	DefaultDebounce     = 100 * time.Millisecond
)

// FileOptions configures a FileSource.
type FileOptions struct {
	// CertFile holds the PEM certificate (leaf first, then intermediates), KeyFile the
	// PEM private key, CAFile the PEM trust bundle. All three are required.
	CertFile, KeyFile, CAFile string
	// TrustDomain, if set, is the trust domain the certificate must belong to and the
	// CA file is the bundle of. Zero means the certificate's own trust domain.
	TrustDomain spiffeid.TrustDomain
	// Source is the kind reported in Material.Source and Status ("files" if empty).
	Source string
	// Logger receives load and reload results; nil discards them.
	Logger *slog.Logger
	// PollInterval is how often the files are re-stat'ed in case a change notification
	// was missed (DefaultPollInterval if zero; negative disables polling).
	PollInterval time.Duration
	// Debounce is how long to wait after a change notification before reading, so that
	// a burst of writes (certificate, then key) is read once (DefaultDebounce if zero).
	Debounce time.Duration
}

// FileSource is a Source that reads the certificate, key and trust bundle from PEM files
// and reads them again whenever they change. Changes are noticed by watching the files'
// directories with fsnotify, which covers in-place writes, editors that write a new file
// and rename it over the old one, and Kubernetes' atomic swap of a `..data` symlink;
// a periodic re-stat catches anything missed (see FileWatcher). A change that does not load (a corrupt or
// mismatched file, or one half of a rotation written before the other) is logged and
// recorded in Status; the previous material stays in force until a good set of files
// appears. All methods are safe to call concurrently.
type FileSource struct {
	*Store
	opts  FileOptions
	log   *slog.Logger
	watch *FileWatcher

	mu    sync.Mutex // serializes reloads; guards tried
	tried [3][]byte  // contents of the last attempt, to skip unchanged files
}

var _ Source = (*FileSource)(nil)

// NewFileSource reads the files once and starts watching them. It fails only for
// invalid options, or when change notifications cannot be set up and polling is
// disabled (with polling, it logs that and relies on polling); if the first read
// fails, the error is logged and Current reports it until good files appear.
func NewFileSource(opts FileOptions) (*FileSource, error) {
	if opts.CertFile == "" || opts.KeyFile == "" || opts.CAFile == "" {
		return nil, errors.New("mtls: files source needs cert_file, key_file and ca_file")
	}
	if opts.Source == "" {
		opts.Source = "files"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("source", opts.Source)
	paths := []string{opts.CertFile, opts.KeyFile, opts.CAFile}
	// The watcher applies the defaults of PollInterval and Debounce.
	w, err := NewFileWatcher(FileWatchOptions{Paths: func() []string { return paths },
		PollInterval: opts.PollInterval, Debounce: opts.Debounce, Logger: log})
	if err != nil {
		return nil, err
	}
	f := &FileSource{Store: NewStore(opts.Source), opts: opts, log: log, watch: w}
	// The watcher is set up before the first read, so that a change made during it
	// is reported once the watcher starts.
	_ = f.reload("start")
	w.Start(func(why string) { _ = f.reload(why) })
	return f, nil
}

// Reload reads the files now (for example on SIGHUP) and reports why they did not load,
// if they did not. Unchanged files are not parsed again; their last result is reported.
func (f *FileSource) Reload() error { return f.reload("request") }

// Close stops watching the files and waits for the watcher to finish.
func (f *FileSource) Close() error { return f.watch.Close() }

func (f *FileSource) paths() [3]string {
	return [3]string{f.opts.CertFile, f.opts.KeyFile, f.opts.CAFile}
}

func (f *FileSource) reload(why string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var data [3][]byte
	for i, p := range f.paths() {
		b, err := os.ReadFile(p)
		if err != nil {
			err = fmt.Errorf("mtls: reading %s: %w", p, err)
			f.tried = [3][]byte{}
			f.fail(err, why)
			return err
		}
		data[i] = b
	}
	if bytes.Equal(data[0], f.tried[0]) && bytes.Equal(data[1], f.tried[1]) && bytes.Equal(data[2], f.tried[2]) {
		if st := f.Status(); st.LastError != "" {
			return errors.New(st.LastError)
		}
		return nil
	}
	f.tried = data
	m, err := ParseMaterial(f.opts.Source, data[0], data[1], data[2], f.opts.TrustDomain, time.Now())
	if err != nil {
		err = fmt.Errorf("%w (cert_file %s, key_file %s, ca_file %s)", err, f.opts.CertFile, f.opts.KeyFile, f.opts.CAFile)
		f.fail(err, why)
		return err
	}
	f.Publish(m)
	f.log.Info("certificate loaded", "trigger", why, "spiffe_id", m.ID().String(),
		"serial", FormatSerial(m.Leaf().SerialNumber), "not_after", m.NotAfter())
	return nil
}

func (f *FileSource) fail(err error, why string) {
	f.Fail(err, time.Now())
	if _, noneErr := f.Current(); noneErr == nil {
		f.log.Error("certificate reload failed; keeping the previous certificate", "trigger", why, "error", err)
	} else {
		f.log.Error("certificate load failed; no certificate loaded", "trigger", why, "error", err)
	}
}
