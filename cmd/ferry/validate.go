package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/ferrymesh/ferry/sidecar/config"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "config file to check")
	kvFile := fs.String("kv-file", "", "a mesh-wide document (the value of discovery.consul.config_key) to check merged with the config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: ferry validate --config FILE [--kv-file PATH]")
		return 2
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (version %s): service %q, %d outbound listener(s), %d upstream(s)\n",
		*file, cfg.Version, cfg.Service, len(cfg.Outbound), len(cfg.Upstreams))
	printWarnings(stdout, *file, cfg)
	if *kvFile == "" {
		return 0
	}
	// The document is checked as Ferry checks the KV value: on its own, then merged with
	// the file; problems name the document's path and line.
	data, err := readFile(*kvFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	ov, err := config.ParseOverlay(*kvFile, 0, data)
	if err == nil {
		cfg, err = config.LoadWithOverlay(*file, ov)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	keys := "nothing (empty document)"
	if k := ov.Keys(); len(k) > 0 {
		keys = strings.Join(k, ", ")
	}
	fmt.Fprintf(stdout, "%s merged into %s: ok (version %s): sets %s; %d outbound listener(s), %d upstream(s)\n",
		*kvFile, *file, cfg.Version, keys, len(cfg.Outbound), len(cfg.Upstreams))
	printWarnings(stdout, *kvFile, cfg)
	return 0
}

// printWarnings prints what cfg sets that is valid but probably unintended, one line each.
func printWarnings(w io.Writer, name string, cfg *config.Config) {
	for _, warn := range cfg.Warnings() {
		fmt.Fprintf(w, "%s: warning: %s\n", name, warn)
	}
}
