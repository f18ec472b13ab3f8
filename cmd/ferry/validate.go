package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/ferrymesh/ferry/sidecar/config"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "config file to check")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: ferry validate --config FILE")
		return 2
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (version %s): service %q, %d outbound listener(s), %d upstream(s)\n",
		*file, cfg.Version, cfg.Service, len(cfg.Outbound), len(cfg.Upstreams))
	return 0
}
