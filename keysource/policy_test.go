package keysource_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keysource"
)

func TestParsePolicy(t *testing.T) {
	for _, c := range []struct {
		in   string
		want keysource.Policy
		str  string // String() of the result
	}{
		{"per-file", keysource.Policy{MaxFiles: 1}, "per-file"},
		{"batched", keysource.Policy{MaxFiles: keysource.DefaultMaxFiles, MaxAge: keysource.DefaultMaxAge}, "batched"},
		{"batched:max-files=100", keysource.Policy{MaxFiles: 100, MaxAge: keysource.DefaultMaxAge}, "batched:max-files=100,max-age=10m0s"},
		{"batched:max-age=5m", keysource.Policy{MaxFiles: keysource.DefaultMaxFiles, MaxAge: 5 * time.Minute}, "batched:max-files=256,max-age=5m0s"},
		{"batched:max-age=90s,max-files=2", keysource.Policy{MaxFiles: 2, MaxAge: 90 * time.Second}, "batched:max-files=2,max-age=1m30s"},
		{"batched:max-files=1", keysource.Policy{MaxFiles: 1, MaxAge: keysource.DefaultMaxAge}, "per-file"},
	} {
		t.Run(c.in, func(t *testing.T) {
			got, err := keysource.ParsePolicy(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			if s := got.String(); s != c.str {
				t.Fatalf("String() = %q, want %q", s, c.str)
			}
			again, err := keysource.ParsePolicy(got.String())
			if err != nil || again.String() != got.String() {
				t.Fatalf("round trip of %q: %+v, %v", got.String(), again, err)
			}
		})
	}
	for _, in := range []string{"", "batch", "per-file:max-files=2", "batched:", "batched:max-files=0",
		"batched:max-files=-1", "batched:max-files=x", "batched:max-age=0", "batched:max-age=-1m",
		"batched:max-age=5", "batched:max-files=2,max-files=3", "batched:colour=red", "batched:max-files"} {
		t.Run("bad="+in, func(t *testing.T) {
			if p, err := keysource.ParsePolicy(in); !errors.Is(err, keysource.ErrInvalid) {
				t.Fatalf("got %+v, %v; want ErrInvalid", p, err)
			}
		})
	}
}

func TestPolicyJSON(t *testing.T) {
	type conf struct {
		Policy keysource.Policy `json:"data_key_policy"`
	}
	for _, p := range []keysource.Policy{{}, keysource.PerFile(), {MaxFiles: 7, MaxAge: time.Hour}} {
		t.Run(p.String(), func(t *testing.T) {
			b, err := json.Marshal(conf{p})
			if err != nil {
				t.Fatal(err)
			}
			var back conf
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
			if back.Policy.String() != p.String() {
				t.Fatalf("%s came back as %v", b, back.Policy)
			}
		})
	}
	var c conf
	if err := json.Unmarshal([]byte(`{"data_key_policy":"sometimes"}`), &c); !errors.Is(err, keysource.ErrInvalid) {
		t.Fatalf("bad policy in JSON: %v", err)
	}
}
