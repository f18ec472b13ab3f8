package config

import (
	"reflect"

	"github.com/ferrymesh/ferry/policy"
)

// policyDefaults makes every list of the policy block that the file leaves out an empty
// list, as applyDefaults does for the rest of the schema, so that a parsed config written
// back with yaml.Marshal parses to the same value. Compile applies the policy's own
// defaults; the block is otherwise kept as written.
func policyDefaults(pc *policy.Config) {
	emptyLists(reflect.ValueOf(pc).Elem())
}

// emptyLists replaces the nil slices in v, a settable value, and in the structs, pointers
// and slices it holds, by empty ones.
func emptyLists(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			emptyLists(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if f := v.Field(i); f.CanSet() {
				emptyLists(f)
			}
		}
	case reflect.Slice:
		if v.IsNil() {
			v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			return
		}
		for i := 0; i < v.Len(); i++ {
			emptyLists(v.Index(i))
		}
	}
}

// checkPolicy validates the policy block with policy.Config.Validate and records each
// problem at its key's line, its path prefixed with "policy".
func checkPolicy(col *collector, pc *policy.Config) {
	for _, fe := range pc.Validate() {
		col.add(path{"policy"}.with(fe.Path...), "%s", fe.Msg)
	}
}

// HasPolicy reports whether the policy block sets anything. Without one the sidecar
// enforces no policy at all (no path normalization either), at no cost per request.
func (c *Config) HasPolicy() bool {
	return setAnything(reflect.ValueOf(c.Policy))
}

// setAnything reports whether v holds a non-zero scalar, a non-nil pointer or a
// non-empty slice.
func setAnything(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Pointer:
		return !v.IsNil()
	case reflect.Slice:
		return v.Len() > 0
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if setAnything(v.Field(i)) {
				return true
			}
		}
		return false
	}
	return !v.IsZero()
}

// checkPolicySource checks what policy.access.source: consul needs besides the block
// itself: intentions match callers by their verified identity, so mTLS must be on.
func checkPolicySource(col *collector, c *Config) {
	if c.Policy.Access.Source != policy.SourceConsul {
		return
	}
	if c.MTLS == nil || c.MTLS.Mode == "disabled" {
		col.add(path{"policy", "access", "source"}, "source: consul needs mtls (intentions match the caller's verified "+
			"SPIFFE ID, which only mTLS gives)")
	}
}
