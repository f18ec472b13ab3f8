package mtls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultDevTTL is the lifetime of the SVIDs a dev source issues for itself.
const DefaultDevTTL = time.Hour

// devRetry is how soon a dev source tries again after failing to issue.
const devRetry = 30 * time.Second

// DevOptions configures a dev source (NewDevSource).
type DevOptions struct {
	// Dir is the directory `ferry ca create` or `ferry ca issue --out` wrote to.
	Dir string
	// Service is this proxy's service name: it names the issued files (NAME.pem,
	// NAME-key.pem) and, unless ID is set, the identity spiffe://<td>/svc/NAME.
	Service string
	// ID overrides the identity a self-issued SVID carries.
	ID spiffeid.ID
	// TrustDomain, if set, is checked against the CA's (or the issued certificate's).
	TrustDomain spiffeid.TrustDomain
	// TTL is the lifetime of self-issued SVIDs (DefaultDevTTL if zero); they are
	// renewed at half their lifetime.
	TTL time.Duration
	// Logger receives load, renewal and error messages; nil discards them.
	Logger *slog.Logger
	// PollInterval and Debounce apply when the issued files are read (see FileOptions).
	PollInterval, Debounce time.Duration
}

// NewDevSource returns a Source backed by the development CA (`ferry ca`), in one of two
// ways, reported as source "dev":
//
//   - If Dir holds certificates issued for the service (`ferry ca issue --service NAME`:
//     NAME.pem, NAME-key.pem and bundle.pem, or ca.pem), it reads and watches them like
//     a FileSource: issuing again rotates them.
//   - Otherwise, if Dir holds the CA itself (ca.pem and ca-key.pem), it issues its own
//     short-lived SVID in memory and renews it at half its lifetime, reading the CA
//     again each time (so a recreated CA is picked up).
func NewDevSource(opts DevOptions) (Source, error) {
	if opts.Dir == "" || opts.Service == "" {
		return nil, errors.New("mtls: dev source needs a directory and a service name")
	}
	if opts.Service != filepath.Base(opts.Service) || strings.HasPrefix(opts.Service, ".") {
		return nil, fmt.Errorf("mtls: dev source: invalid service name %q", opts.Service)
	}
	certFile := filepath.Join(opts.Dir, SVIDCertFile(opts.Service))
	if _, err := os.Stat(certFile); err == nil {
		caFile := filepath.Join(opts.Dir, BundleFile)
		if _, err := os.Stat(caFile); err != nil {
			caFile = filepath.Join(opts.Dir, CACertFile)
		}
		return NewFileSource(FileOptions{
			CertFile:     certFile,
			KeyFile:      filepath.Join(opts.Dir, SVIDKeyFile(opts.Service)),
			CAFile:       caFile,
			TrustDomain:  opts.TrustDomain,
			Source:       "dev",
			Logger:       opts.Logger,
			PollInterval: opts.PollInterval,
			Debounce:     opts.Debounce,
		})
	}
	if _, err := os.Stat(filepath.Join(opts.Dir, CAKeyFile)); err != nil {
		return nil, fmt.Errorf("mtls: dev source: %s has neither certificates for %q (run `ferry ca issue --dir %s --service %s`) nor a CA key (run `ferry ca create --dir %s`)",
			opts.Dir, opts.Service, opts.Dir, opts.Service, opts.Dir)
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultDevTTL
	}
	if opts.TTL < 0 {
		return nil, fmt.Errorf("mtls: dev source: lifetime must be positive, not %s", opts.TTL)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &devIssuer{
		Store:  NewStore("dev"),
		opts:   opts,
		log:    log.With("source", "dev"),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	next := d.renew()
	go d.run(ctx, next)
	return d, nil
}

// devIssuer issues and renews its own SVID from the development CA.
type devIssuer struct {
	*Store
	opts   DevOptions
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Close stops renewing and waits for the renewal goroutine to finish.
func (d *devIssuer) Close() error {
	d.once.Do(func() {
		d.cancel()
		<-d.done
	})
	return nil
}

func (d *devIssuer) run(ctx context.Context, next time.Duration) {
	defer close(d.done)
	for {
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
			next = d.renew()
		}
	}
}

// renew issues and publishes a new SVID and returns how long until the next renewal.
func (d *devIssuer) renew() time.Duration {
	now := time.Now()
	m, err := d.issue(now)
	if err != nil {
		d.Fail(err, now)
		d.log.Error("cannot issue a development certificate", "dir", d.opts.Dir, "error", err)
		return devRetry
	}
	d.Publish(m)
	d.log.Info("development certificate issued", "spiffe_id", m.ID().String(),
		"serial", FormatSerial(m.Leaf().SerialNumber), "not_after", m.NotAfter())
	return m.NotAfter().Sub(now) / 2
}

func (d *devIssuer) issue(now time.Time) (*Material, error) {
	ca, err := LoadCA(d.opts.Dir)
	if err != nil {
		return nil, err
	}
	td := ca.TrustDomain()
	if !d.opts.TrustDomain.IsZero() {
		if !td.IsZero() && td != d.opts.TrustDomain {
			return nil, fmt.Errorf("mtls: the CA in %s is for trust domain %q, not %q", d.opts.Dir, td, d.opts.TrustDomain)
		}
		td = d.opts.TrustDomain
	}
	id := d.opts.ID
	if id.IsZero() {
		if td.IsZero() {
			return nil, fmt.Errorf("mtls: the CA in %s names no trust domain; configure one", d.opts.Dir)
		}
		if id, err = ServiceID(td, d.opts.Service); err != nil {
			return nil, err
		}
	}
	svid, err := ca.Issue(IssueRequest{ID: id, TTL: d.opts.TTL, Now: now})
	if err != nil {
		return nil, err
	}
	return NewMaterial("dev", svid, now, ca.Bundle(id.TrustDomain()))
}
