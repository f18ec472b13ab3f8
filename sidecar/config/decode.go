package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"go.yaml.in/yaml/v3"
)

// nodeError returns a *yaml.TypeError about node n. yaml.v3 collects a *yaml.TypeError
// returned by UnmarshalYAML with the other problems of the file and goes on decoding,
// whereas any other error would abort it. The message carries n's line and column
// ("line N: col C: msg") so that Parse can find n's path.
func nodeError(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: col %d: ", n.Line, n.Column) + fmt.Sprintf(format, args...)}}
}

// String returns d in time.Duration's format, e.g. "1m30s".
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML decodes a Go duration string such as "1.5s" or "200ms". A bad value is
// reported as a *yaml.TypeError so that decoding continues and every problem is reported.
// Negative durations decode; validation refuses them.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return nodeError(n, "want a duration such as 1s or 250ms, got %s", describe(n))
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return nodeError(n, "invalid duration %q (want a Go duration such as 1s, 250ms or 1m30s)", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as its string form, e.g. "1s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalJSON writes d as its string form, e.g. "1s", so that /config_dump shows
// durations as they are written in the file rather than as nanoseconds.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads the string form written by MarshalJSON.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"1s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// endpointFields is the mapping form of an Endpoint. It has Endpoint's fields so that the
// two convert into each other.
type endpointFields struct {
	Address string `yaml:"address"`
	Weight  uint32 `yaml:"weight"`
}

// UnmarshalYAML decodes a "host:port" string or an {address, weight} mapping. Unknown keys
// of the mapping are errors. Problems are reported as a *yaml.TypeError so that decoding
// goes on; the address itself is checked by validation. An absent weight stays 0 here and
// becomes 1 when Parse applies defaults; an explicit 0 is refused.
func (e *Endpoint) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*e = Endpoint{Address: n.Value}
		return nil
	case yaml.MappingNode:
		var problems []string
		unknownEndpointKeys(n, func(k *yaml.Node) {
			problems = append(problems, fmt.Sprintf("line %d: field %s not found in type %s",
				k.Line, k.Value, reflect.TypeFor[endpointFields]()))
		})
		var f endpointFields
		if err := n.Decode(&f); err != nil {
			var te *yaml.TypeError
			if !errors.As(err, &te) {
				return err
			}
			problems = append(problems, te.Errors...)
		}
		*e = Endpoint(f)
		if len(problems) > 0 {
			return &yaml.TypeError{Errors: problems}
		}
		return nil
	}
	return nodeError(n, "want \"host:port\" or a mapping {address, weight}, got %s", describe(n))
}

// unknownEndpointKeys calls report for each key of mapping n, or of the mappings it merges,
// that an endpoint does not have. (n.Decode does not check keys: yaml.v3 offers strict
// decoding only through a Decoder.)
func unknownEndpointKeys(n *yaml.Node, report func(key *yaml.Node)) {
	seen := make(map[*yaml.Node]bool)
	var scan func(m *yaml.Node)
	scan = func(m *yaml.Node) {
		m = resolve(m)
		if m == nil || seen[m] {
			return
		}
		seen[m] = true
		switch m.Kind {
		case yaml.SequenceNode:
			for _, item := range m.Content {
				scan(item)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(m.Content); i += 2 {
				k := m.Content[i]
				switch {
				case isMerge(k):
					scan(m.Content[i+1])
				case k.Kind == yaml.ScalarNode && k.Value != "address" && k.Value != "weight":
					report(k)
				}
			}
		}
	}
	scan(n)
}
