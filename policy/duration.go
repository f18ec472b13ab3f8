package policy

import (
	"encoding/json"
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as a Go duration string ("1s", "250ms") in YAML and
// JSON.
type Duration time.Duration

// String returns d in time.Duration's format.
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML decodes a Go duration string. A bad value is a *yaml.TypeError, so that
// decoding goes on and reports every problem with its line.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: col %d: invalid duration %q (want a Go duration such as 1s or 250ms)", n.Line, n.Column, n.Value)}}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as its string form.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalJSON writes d as its string form, e.g. "1s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads the string form.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
