package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferrymesh/ferry/sidecar"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

func cmdRun(args []string, _ io.Writer, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "config file (YAML)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	format := fs.String("log-format", "text", "log format: text or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" {
		fmt.Fprintln(stderr, "usage: ferry run --config FILE [-- APP ARGS...]")
		return 2
	}
	app := fs.Args()
	log, err := newLogger(stderr, *level, *format)
	if err != nil {
		fmt.Fprintln(stderr, "ferry:", err)
		return 2
	}

	// Signals are caught from the start so that none is lost while starting up.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)

	metrics := telemetry.NewMetrics()
	// The file, merged with the Consul KV document it names in discovery.consul.config_key.
	mesh := newMeshConfig(*file, log, metrics)
	defer mesh.close()
	cfg, err := mesh.start()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range cfg.Warnings() {
		log.Warn(w, "config", cfg.File)
	}

	sc := sidecar.New(sidecar.Options{Logger: log, Metrics: metrics,
		TracingInstance: map[string]string{"version": versionString(), "admin": cfg.Admin.Address}})
	adminLn, err := net.Listen("tcp", cfg.Admin.Address)
	if err != nil {
		log.Error("admin listener", "error", err)
		return 1
	}
	admin := &http.Server{Handler: sc.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = admin.Serve(adminLn) }()
	defer admin.Close()

	if err := sc.Apply(cfg); err != nil {
		log.Error("cannot start", "config", *file, "error", err)
		return 1
	}
	log.Info("config applied", "config", *file, "version", cfg.Version, "admin", adminLn.Addr().String())

	var appDone chan error
	var proc *os.Process
	for len(app) > 0 && proc == nil {
		if ok, _ := sc.Ready(); ok {
			cmd := exec.Command(app[0], app[1:]...)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
			// Its own process group: signals reach it once, through Ferry.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				log.Error("cannot start the application", "command", app, "error", err)
				drain(sc, cfg, log)
				return 127
			}
			proc = cmd.Process
			appDone = make(chan error, 1)
			go func() { appDone <- cmd.Wait() }()
			log.Info("application started", "command", app, "pid", proc.Pid)
			break
		}
		select {
		case sig := <-sigs:
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				log.Info("signal before the application started; draining", "signal", sig.String())
				drain(sc, cfg, log)
				return 0
			}
		case <-time.After(50 * time.Millisecond):
		}
	}

	stopping := false
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				if next := mesh.reloadFile(); next != nil {
					if cfg = reload(sc, next, cfg, "SIGHUP", log); cfg == next {
						mesh.commit(next)
					}
				}
			case syscall.SIGTERM, syscall.SIGINT:
				if stopping {
					log.Warn("second signal: stopping now", "signal", sig.String())
					if proc != nil {
						_ = proc.Kill()
					}
					return 1
				}
				stopping = true
				if proc == nil {
					log.Info("draining", "signal", sig.String(), "drain_timeout", cfg.DrainTimeout.D())
					drain(sc, cfg, log)
					return 0
				}
				// Peers stop sending to us while the application shuts down; outbound
				// listeners keep serving it until it has exited.
				sc.Unready()
				log.Info("passing signal to the application", "signal", sig.String())
				_ = proc.Signal(sig)
			default:
				if proc != nil {
					_ = proc.Signal(sig)
				}
			}
		case kv := <-mesh.values:
			if next := mesh.kvChanged(kv); next != nil {
				cfg = reload(sc, next, cfg, "consul kv", log)
			}
		case err := <-appDone:
			code := exitCode(err)
			log.Info("application exited; draining", "code", code)
			drain(sc, cfg, log)
			return code
		}
	}
}

// reload applies next (the file reloaded on SIGHUP, or merged with a changed Consul KV
// document; already validated) and returns it, or cur if Apply refuses it (the running
// config stays).
func reload(sc *sidecar.Sidecar, next, cur *config.Config, trigger string, log *slog.Logger) *config.Config {
	if next.Admin.Address != cur.Admin.Address {
		log.Warn("admin.address changes take effect on restart", "running", cur.Admin.Address, "file", next.Admin.Address)
	}
	if err := sc.Apply(next); err != nil {
		log.Error("reload refused; the running config stays", "config", next.File, "trigger", trigger, "version", cur.Version, "error", err)
		return cur
	}
	for _, w := range next.Warnings() {
		log.Warn(w, "config", next.File)
	}
	attrs := []any{"config", next.File, "trigger", trigger, "version", next.Version, "previous", cur.Version}
	if ov := next.Overlay; ov != nil {
		attrs = append(attrs, "kv", ov.Source, "modify_index", ov.ModifyIndex, "kv_keys", ov.Keys)
	}
	log.Info("config reloaded", attrs...)
	return next
}

func drain(sc *sidecar.Sidecar, cfg *config.Config, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout.D())
	defer cancel()
	start := time.Now()
	sc.Drain(ctx)
	log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	o := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, got %q", format)
}
