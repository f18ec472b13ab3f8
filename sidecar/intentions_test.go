package sidecar

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
)

// echoApp is a TCP application that echoes what it reads.
func echoApp(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// TestIntentionsOnTCPAndAcrossReloads: on a TCP inbound listener an L4 intention decides
// at connection time and an L7 intention fails closed; the watch survives reloads that
// keep source consul and stops when the source goes back to file.
func TestIntentionsOnTCPAndAcrossReloads(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	cc, err := api.NewClient(&api.Config{Address: agent.Addr})
	if err != nil {
		t.Fatal(err)
	}
	setIx := func(sources ...*api.SourceIntention) {
		t.Helper()
		if _, _, err := cc.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "db",
			Sources: sources}, nil); err != nil {
			t.Fatalf("service-intentions: %v", err)
		}
	}
	dir := issue(t, "db", "web", "batch")
	in, app := freeAddr(t), echoApp(t)
	cfgText := func(access string) string {
		return fmt.Sprintf("service: db\nadmin: {address: 127.0.0.1:1}\ninbound: {address: %s, target: %s, protocol: tcp}\n"+
			"discovery: {consul: {address: %s}}\npolicy: {access: %s}\n"+
			"mtls: {cert_file: %s/db.pem, key_file: %s/db-key.pem, ca_file: %s/bundle.pem}\n", in, app, agent.Addr, access, dir, dir, dir)
	}
	// echo reports whether a connection as caller gets its bytes back.
	echo := func(caller string) bool {
		t.Helper()
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, caller+".pem"), filepath.Join(dir, caller+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", in,
			&tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}) // the test checks the policy only
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "ping"); err != nil {
			return false
		}
		buf := make([]byte, 4)
		_, err = io.ReadFull(c, buf)
		return err == nil && string(buf) == "ping"
	}

	setIx(&api.SourceIntention{Name: "web", Action: "allow"}, &api.SourceIntention{Name: "*", Action: "deny"})
	s := New(Options{})
	drained(t, s)
	if err := s.Apply(parse(t, cfgText("{source: consul}"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if ok, why := s.Ready(); !ok {
		t.Fatalf("Ready() = false, %q, want true once the first intentions arrived", why)
	}
	if !echo("web") {
		t.Errorf("web (intention allow) was refused")
	}
	if echo("batch") {
		t.Errorf("batch (wildcard intention deny) was let through")
	}

	// An L7 intention cannot be checked on a TCP connection: it fails closed. (Consul
	// needs an HTTP destination to store one; the listener is TCP all the same.)
	if _, _, err := cc.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "db", Protocol: "http"}, nil); err != nil {
		t.Fatal(err)
	}
	setIx(&api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
		{Action: "allow", HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}}}})
	waitFor(t, "web refused under an L7 intention", func() bool { return !echo("web") })
	if !echo("batch") {
		t.Errorf("batch (no intention, default allow) was refused")
	}

	// A reload keeping source consul keeps the watch; going back to file stops it.
	w1 := s.intentions.live.Load()
	if err := s.Apply(parse(t, cfgText("{source: consul, default: deny}"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if w2 := s.intentions.live.Load(); w2 != w1 {
		t.Errorf("reload with source consul started a new intentions watch, want the running one kept")
	}
	if echo("batch") {
		t.Errorf("batch was let through after default: deny")
	}
	if err := s.Apply(parse(t, cfgText("{default: allow}"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if s.intentions.live.Load() != nil {
		t.Errorf("intentions watch still recorded after going back to source file")
	}
	select {
	case <-w1.done:
	case <-time.After(5 * time.Second):
		t.Errorf("intentions watcher still running 5s after going back to source file")
	}
	if !echo("web") {
		t.Errorf("web refused under file rules with default allow")
	}
}
