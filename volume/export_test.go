package volume

import (
	"context"

	"github.com/kmsfs/kmsfs/internal/mountinfo"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
)

// RewrapTarget returns the new stanzas of a rewrap to c, whose keys open
// as sources, for files whose headers hold old stanzas of data key dk:
// one rewrapper's target, which caches its work per distinct stanza set.
func RewrapTarget(c *volconf.Conf, sources []keysource.KeySource) func(ctx context.Context, old []keysource.Stanza, dk []byte) ([]keysource.Stanza, error) {
	return newRewrapper(c, sources).target
}

// KmsfsMounts is MountsOf's filter over a parsed mount table.
func KmsfsMounts(ms []mountinfo.Mount, abs string, uid, owner int) []Mount {
	return kmsfsMounts(ms, abs, uid, owner)
}
