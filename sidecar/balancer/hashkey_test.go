package balancer

import "testing"

func TestHashString(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
	}{
		// XXH64 reference values, seed 0.
		{"", 0xef46db3751d8e999},
		{"a", 0xd24ec4f1a98c6e5b},
		{"abc", 0x44bc2cf5ad770999},
	}
	for _, tt := range tests {
		if got := HashString(tt.in); got != tt.want {
			t.Errorf("HashString(%q) = %#x, want %#x", tt.in, got, tt.want)
		}
	}
	if got := testing.AllocsPerRun(100, func() { HashString("x-user: alice") }); got != 0 {
		t.Errorf("HashString allocations = %v, want 0", got)
	}
}
