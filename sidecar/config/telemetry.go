package config

import (
	"errors"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// Access-log formats accepted in telemetry.access_log_format.
const (
	// AccessLogJSON writes one JSON object per line (the default).
	AccessLogJSON = telemetry.AccessLogJSON
	// AccessLogText writes logfmt-style key=value pairs.
	AccessLogText = telemetry.AccessLogText
)

// checkTelemetry records the problems of the telemetry block: the access-log format, and
// what TracingConfig.Validate finds in telemetry.tracing, each at its key's line.
func checkTelemetry(col *collector, t *Telemetry) {
	switch t.AccessLogFormat {
	case AccessLogJSON, AccessLogText:
	default:
		col.add(path{"telemetry", "access_log_format"}, "unknown format %q (want %s or %s)",
			t.AccessLogFormat, AccessLogJSON, AccessLogText)
	}
	if t.Tracing == nil {
		return
	}
	p := path{"telemetry", "tracing"}
	if !t.Tracing.Enabled() {
		col.add(p.with("otlp_endpoint"), "missing OTLP endpoint (leave telemetry.tracing out to turn tracing off)")
		return
	}
	err := t.Tracing.Validate()
	if err == nil {
		return
	}
	for _, e := range unjoin(err) {
		var te *telemetry.TracingConfigError
		if errors.As(e, &te) {
			col.add(p.with(te.Key), "%s", te.Msg)
		} else {
			col.add(p, "%v", e)
		}
	}
}

// unjoin returns the errors joined in err by errors.Join, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
