package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
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
		*e, problems = endpointFromMapping(n)
		if len(problems) > 0 {
			return &yaml.TypeError{Errors: problems}
		}
		return nil
	}
	return nodeError(n, "want \"host:port\" or a mapping {address, weight}, got %s", describe(n))
}

// endpointFromMapping decodes the mapping form of an endpoint, returning what it could
// decode and its problems as *yaml.TypeError messages. It walks the keys itself rather than
// calling n.Decode: yaml.v3 checks keys only through a Decoder, and a nested decoder would
// start a fresh alias budget for every use of an anchored endpoint. Keys merged with "<<"
// count, with yaml.v3's precedence: a mapping's own keys first, then merged ones in order.
func endpointFromMapping(n *yaml.Node) (Endpoint, []string) {
	var (
		e               Endpoint
		problems        []string
		address, weight *yaml.Node
	)
	problem := func(err error) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			problems = append(problems, te.Errors...)
		}
	}
	seen := make(map[*yaml.Node]bool)
	var scan func(m *yaml.Node)
	scan = func(m *yaml.Node) {
		if seen[m] {
			return
		}
		seen[m] = true
		type key struct {
			kind  yaml.Kind
			value string
		}
		firstLine := make(map[key]int) // duplicate keys, checked like yaml.v3 does
		for i := 0; i+1 < len(m.Content); i += 2 {
			k := m.Content[i]
			if line, dup := firstLine[key{k.Kind, k.Value}]; dup {
				problems = append(problems, fmt.Sprintf("line %d: mapping key %q already defined at line %d", k.Line, k.Value, line))
			} else {
				firstLine[key{k.Kind, k.Value}] = k.Line
			}
			switch {
			case isMerge(k):
			case k.Kind != yaml.ScalarNode:
				problem(nodeError(k, "want a key (address or weight), got %s", describe(k)))
			case k.Value == "address":
				if address == nil {
					address = m.Content[i+1]
				}
			case k.Value == "weight":
				if weight == nil {
					weight = m.Content[i+1]
				}
			default:
				problems = append(problems, fmt.Sprintf("line %d: field %s not found in type %s",
					k.Line, k.Value, reflect.TypeFor[endpointFields]()))
			}
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			if !isMerge(m.Content[i]) {
				continue
			}
			v := resolve(m.Content[i+1])
			switch {
			case v != nil && v.Kind == yaml.MappingNode:
				scan(v)
			case v != nil && v.Kind == yaml.SequenceNode:
				for _, item := range v.Content {
					if r := resolve(item); r != nil && r.Kind == yaml.MappingNode {
						scan(r)
					} else {
						problem(nodeError(item, "merge (<<) needs mappings, got %s", describe(item)))
					}
				}
			default:
				problem(nodeError(m.Content[i+1], "merge (<<) needs a mapping or a list of mappings, got %s", describe(v)))
			}
		}
	}
	scan(n)

	if r := resolve(address); r != nil && r.ShortTag() != "!!null" {
		if r.Kind == yaml.ScalarNode {
			e.Address = r.Value
		} else {
			problem(nodeError(r, "want a string, got %s", describe(r)))
		}
	}
	if r := resolve(weight); r != nil && r.ShortTag() != "!!null" {
		if r.Kind == yaml.ScalarNode {
			// Decoding a scalar is cheap; its only errors are *yaml.TypeError.
			if err := r.Decode(&e.Weight); err != nil {
				problem(err)
				if !errors.As(err, new(*yaml.TypeError)) {
					problem(nodeError(r, "invalid weight: %v", err))
				}
			}
		} else {
			problem(nodeError(r, "want an integer from 1 to %d, got %s", MaxWeight, describe(r)))
		}
	}
	return e, problems
}

// UnmarshalYAML decodes a status code (200) or an inclusive range ("200-299"). A bad value
// is reported as a *yaml.TypeError so that decoding continues; the codes themselves are
// checked by validation.
func (r *StatusRange) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return nodeError(n, "want a status code such as 200 or a range such as \"200-299\", got %s", describe(n))
	}
	v, ok := parseStatusRange(n.Value)
	if !ok {
		return nodeError(n, "invalid status %q (want a code such as 200 or a range such as \"200-299\")", n.Value)
	}
	*r = v
	return nil
}

// parseStatusRange parses "200" or "200-299".
func parseStatusRange(s string) (StatusRange, bool) {
	lo, hi, isRange := strings.Cut(s, "-")
	minCode, err := strconv.Atoi(strings.TrimSpace(lo))
	if err != nil {
		return StatusRange{}, false
	}
	maxCode := minCode
	if isRange {
		if maxCode, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
			return StatusRange{}, false
		}
	}
	return StatusRange{Min: minCode, Max: maxCode}, true
}

// String returns "200" or "200-299".
func (r StatusRange) String() string {
	if r.Min == r.Max {
		return strconv.Itoa(r.Min)
	}
	return fmt.Sprintf("%d-%d", r.Min, r.Max)
}

// MarshalYAML writes r as its string form.
func (r StatusRange) MarshalYAML() (any, error) { return r.String(), nil }

// MarshalJSON writes r as its string form, e.g. "200-299".
func (r StatusRange) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

// UnmarshalJSON reads the string form written by MarshalJSON.
func (r *StatusRange) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("status range: want a string such as \"200-299\": %w", err)
	}
	v, ok := parseStatusRange(s)
	if !ok {
		return fmt.Errorf("invalid status range %q", s)
	}
	*r = v
	return nil
}
