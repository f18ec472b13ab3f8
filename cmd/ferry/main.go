// Command ferry is the Ferry sidecar proxy. See `ferry help`.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise it comes from
// the module's build information.
var version = ""

const usage = `ferry — a sidecar service-mesh proxy

Usage:
  ferry run --config FILE [--log-level LEVEL] [--log-format text|json] [-- APP ARGS...]
        Run the sidecar. With an application command after --, start it once Ferry is
        ready, pass signals on to it, and when it exits drain and exit with its code.
        SIGHUP reloads FILE; SIGTERM or SIGINT drain gracefully and exit. With
        discovery.consul.config_key, the KV document is merged into FILE and followed.
  ferry validate --config FILE [--kv-file PATH]
        Check a config file; print every problem as file:line and exit 1 if there is one.
        With --kv-file, also check PATH as the Consul KV document of
        discovery.consul.config_key, merged with FILE (before consul kv put).
  ferry ca create|issue ...
        Development certificate authority: create a CA, issue SVIDs (ferry ca help).
  ferry version
        Print the version.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "ca":
		return cmdCA(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "ferry", versionString())
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ferry: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
