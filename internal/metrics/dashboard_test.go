package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/metrics"
	"github.com/kmsfs/kmsfs/keysource"
)

// TestDashboardNames checks that every kmsfs_ series the shipped Grafana
// dashboard queries is one the metrics expose, so that a renamed metric
// cannot leave a panel silently empty.
func TestDashboardNames(t *testing.T) {
	raw, err := os.ReadFile("../../docs/grafana/kmsfs.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("docs/grafana/kmsfs.json: %v", err)
	}
	m := metrics.New()
	// Every vector gets a child, so that every family is gathered.
	m.KeyCall("local", keysource.OpWrap, time.Millisecond, nil)
	m.Op(fs.OpRead, time.Microsecond)
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	name := regexp.MustCompile(`\bkmsfs_[a-z_]+`)
	seen := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				seen++
				base := n
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if b, ok := strings.CutSuffix(n, suffix); ok && have[b] {
						base = b
					}
				}
				if !have[base] {
					t.Errorf("panel %q queries %s, which no metric exposes", p.Title, n)
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("the dashboard queries no kmsfs_ metric")
	}
}
