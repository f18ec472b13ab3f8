package mtls

import (
	"errors"
	"log/slog"
	"testing"
	"time"
)

// TestSDSRejectionCountedOnce: a server that sends a rejected version again (a snapshot
// cache does, at once) is the same rejection even when the error's text changed, as an
// expired certificate's does with the time; a new version, or an unversioned response
// with another error, is a new one.
func TestSDSRejectionCountedOnce(t *testing.T) {
	tests := []struct {
		name      string
		rejects   [][2]string // version, error text
		wantFails uint64
	}{
		{"same version, same error", [][2]string{{"v2", "bad key"}, {"v2", "bad key"}, {"v2", "bad key"}}, 1},
		{"same version, error text with the time",
			[][2]string{{"v2", "expired: current time 04:05:01"}, {"v2", "expired: current time 04:05:02"}}, 1},
		{"new version", [][2]string{{"v2", "bad key"}, {"v3", "bad key"}}, 2},
		{"no version, same error", [][2]string{{"", "bad key"}, {"", "bad key"}}, 1},
		{"no version, another error", [][2]string{{"", "bad key"}, {"", "other CA"}}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &SDSSource{Store: NewStore("sds"), log: slog.New(slog.DiscardHandler),
				opts: SDSOptions{RetryBase: time.Millisecond, RetryMax: time.Second}}
			for i, r := range tc.rejects {
				wait := s.rejected(r[0], errors.New(r[1]))
				if i == 0 && wait != 0 {
					t.Errorf("rejected() of the first response = %v, want no wait", wait)
				}
			}
			if got := s.Status().Failures; got != tc.wantFails {
				t.Errorf("Status().Failures = %d, want %d", got, tc.wantFails)
			}
		})
	}
}
