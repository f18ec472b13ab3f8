// Package static is the discovery source for upstreams whose endpoints are listed in the
// config file.
package static

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/ferrymesh/ferry/discovery"
)

// Source publishes a fixed set of endpoints per upstream. It is immutable and safe for
// concurrent use.
type Source struct {
	sets map[string]*discovery.EndpointSet
}

var _ discovery.Source = (*Source)(nil)

// New returns a source serving the given endpoints, keyed by upstream name. Each set's
// version is a hash of its contents, so an unchanged list keeps its version across reloads.
func New(endpoints map[string][]discovery.Endpoint) *Source {
	sets := make(map[string]*discovery.EndpointSet, len(endpoints))
	for name, eps := range endpoints {
		set := discovery.NewEndpointSet(name, "", eps)
		h := sha256.New()
		for _, e := range set.Endpoints() {
			h.Write([]byte(e.Address + "\x00" + strconv.FormatUint(uint64(e.Weight), 10) + "\x00" + e.Identity + "\x00"))
		}
		sets[name] = discovery.NewEndpointSet(name, "static-"+hex.EncodeToString(h.Sum(nil))[:12], set.Endpoints())
	}
	return &Source{sets: sets}
}

// Watch publishes the upstream's endpoints once and then waits for ctx to be done.
func (s *Source) Watch(ctx context.Context, upstream string, update func(*discovery.EndpointSet)) error {
	set, ok := s.sets[upstream]
	if !ok {
		return fmt.Errorf("static discovery: no endpoints for upstream %q", upstream)
	}
	update(set)
	<-ctx.Done()
	return nil
}
