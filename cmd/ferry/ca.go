package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/mtls"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const caUsage = `ferry ca — development certificate authority

Usage:
  ferry ca create --dir DIR [--trust-domain mesh.local] [--ttl 8760h] [--force]
        Create an ECDSA P-256 root CA for the trust domain: DIR/ca.pem and
        DIR/ca-key.pem (mode 0600). Refuses to replace an existing CA without --force.
  ferry ca issue --dir DIR --service NAME [--trust-domain TD] [--ttl 24h] [--out OUTDIR]
                 [--dns NAME]... [--id SPIFFE_ID]
        Issue an X509-SVID for spiffe://TD/svc/NAME (or --id) signed by the CA in DIR:
        OUTDIR/NAME.pem, OUTDIR/NAME-key.pem (mode 0600) and OUTDIR/bundle.pem (the
        trust bundle). OUTDIR defaults to DIR; TD defaults to the CA's. Issuing again
        replaces the files atomically, which a running sidecar picks up.
`

func cmdCA(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, caUsage)
		return 2
	}
	switch args[0] {
	case "create":
		return caCreate(args[1:], stdout, stderr)
	case "issue":
		return caIssue(args[1:], stdout, stderr)
	case "help", "--help", "-h":
		fmt.Fprint(stdout, caUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "ferry ca: unknown command %q\n\n%s", args[0], caUsage)
		return 2
	}
}

func caCreate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ca create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory for ca.pem and ca-key.pem")
	tdName := fs.String("trust-domain", mtls.DefaultTrustDomain, "SPIFFE trust domain")
	ttl := fs.Duration("ttl", mtls.DefaultCATTL, "lifetime of the CA certificate")
	force := fs.Bool("force", false, "replace an existing CA")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: ferry ca create --dir DIR [--trust-domain TD] [--ttl DURATION] [--force]")
		return 2
	}
	td, err := mtls.ParseTrustDomain(*tdName)
	if err != nil {
		fmt.Fprintln(stderr, "ferry ca create:", err)
		return 2
	}
	ca, err := mtls.NewCA(td, *ttl, time.Now())
	if err != nil {
		fmt.Fprintln(stderr, "ferry ca create:", err)
		return 2
	}
	if err := ca.Write(*dir, *force); err != nil {
		fmt.Fprintln(stderr, "ferry ca create:", err)
		return 1
	}
	c := ca.Certificate()
	fmt.Fprintf(stdout, "created CA for trust domain %s in %s (%s, %s)\n  serial %s, valid until %s\n",
		td.Name(), *dir, mtls.CACertFile, mtls.CAKeyFile, mtls.FormatSerial(c.SerialNumber), c.NotAfter.UTC().Format(time.RFC3339))
	return 0
}

// dnsNames collects --dns flags; each may also hold a comma-separated list.
type dnsNames []string

func (d *dnsNames) String() string { return strings.Join(*d, ",") }

func (d *dnsNames) Set(v string) error {
	for n := range strings.SplitSeq(v, ",") {
		if n = strings.TrimSpace(n); n == "" {
			return errors.New("empty DNS name")
		}
		*d = append(*d, n)
	}
	return nil
}

func caIssue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ca issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory of the CA (ca.pem, ca-key.pem)")
	service := fs.String("service", "", "service name: names the files and the SPIFFE ID")
	tdName := fs.String("trust-domain", "", "SPIFFE trust domain (default: the CA's, else "+mtls.DefaultTrustDomain+")")
	ttl := fs.Duration("ttl", mtls.DefaultSVIDTTL, "lifetime of the certificate")
	out := fs.String("out", "", "directory for the certificate, key and bundle (default: --dir)")
	idFlag := fs.String("id", "", "SPIFFE ID to issue instead of spiffe://TD/svc/NAME")
	var dns dnsNames
	fs.Var(&dns, "dns", "DNS name to add as a SAN (repeatable, or comma-separated)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || *service == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: ferry ca issue --dir DIR --service NAME [--trust-domain TD] [--ttl DURATION] [--out OUTDIR] [--dns NAME]... [--id SPIFFE_ID]")
		return 2
	}
	if *out == "" {
		*out = *dir
	}
	ca, err := mtls.LoadCA(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "ferry ca issue: %v (create one with `ferry ca create --dir %s`)\n", err, *dir)
		return 1
	}
	td := ca.TrustDomain()
	if *tdName != "" {
		want, err := mtls.ParseTrustDomain(*tdName)
		if err != nil {
			fmt.Fprintln(stderr, "ferry ca issue:", err)
			return 2
		}
		if !td.IsZero() && td != want {
			fmt.Fprintf(stderr, "ferry ca issue: the CA in %s is for trust domain %s, not %s\n", *dir, td.Name(), want.Name())
			return 1
		}
		td = want
	} else if td.IsZero() {
		td = spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	}
	var id spiffeid.ID
	if *idFlag != "" {
		id, err = mtls.ParseID(*idFlag)
	} else {
		id, err = mtls.ServiceID(td, *service)
	}
	if err != nil {
		fmt.Fprintln(stderr, "ferry ca issue:", err)
		return 2
	}
	svid, err := ca.Issue(mtls.IssueRequest{ID: id, TTL: *ttl, DNSNames: dns})
	if err != nil {
		fmt.Fprintln(stderr, "ferry ca issue:", err)
		return 1
	}
	files, err := mtls.WriteSVID(*out, *service, svid, ca.Bundle(id.TrustDomain()))
	if err != nil {
		fmt.Fprintln(stderr, "ferry ca issue:", err)
		return 1
	}
	leaf := svid.Certificates[0]
	fmt.Fprintf(stdout, "issued %s\n  serial %s, valid until %s\n  cert   %s\n  key    %s\n  bundle %s\n",
		id, mtls.FormatSerial(leaf.SerialNumber), leaf.NotAfter.UTC().Format(time.RFC3339), files.Cert, files.Key, files.Bundle)
	return 0
}
