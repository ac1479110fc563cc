package envelope_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/stanza"
)

// TestKeysInLockedMemory: with an arena, a file's header key and (with
// vaesgcm) its key schedule live in arena cells while it is open, and
// every cell is freed (zeroed) when it closes, when its header fails to
// authenticate, and when a rewrap's check is done.
func TestKeysInLockedMemory(t *testing.T) { bothGCMs(t, testKeysInLockedMemory) }

func testKeysInLockedMemory(t *testing.T) {
	mem := secmem.New(secmem.Options{})
	v := newVolume(t, 4096, func(o *envelope.Options) { o.Mem = mem })
	open := 1 // the header key
	if envelope.WideGCM() {
		open++ // the key schedule
	}
	dk := dataKey(20)
	f, b := newFile(t, v, dk)
	if n := mem.InUse(); n != open {
		t.Fatalf("created file holds %d cells, want %d", n, open)
	}
	if _, err := f.WriteAt(fill(10000, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Rewrap(dk, []stanza.Stanza{clearStanza(dk)}); err != nil {
		t.Fatal(err)
	}
	if n := mem.InUse(); n != open {
		t.Fatalf("after rewrap %d cells, want %d", n, open)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := mem.InUse(); n != 0 {
		t.Fatalf("closed file left %d cells in use", n)
	}
	if mem.LockedBytes() == 0 && mem.LockError() == nil {
		t.Fatal("no memory locked and no lock error reported")
	}

	g := reopen(t, v, memfile.New(b.Bytes()))
	p := make([]byte, 10000)
	if n, err := g.ReadAt(p, 0); n != len(p) || err != nil || !bytes.Equal(p, fill(10000, 1)) {
		t.Fatalf("read back: %d, %v", n, err)
	}
	g.Close()
	// Both slots' MACs broken: each slot's derived keys are dropped.
	raw := b.Bytes()
	ss := v.Layout().SlotSize()
	raw[ss-1] ^= 1
	raw[2*ss-1] ^= 1
	if _, err := v.Open(context.Background(), memfile.New(raw), &clearKeys{}); err == nil {
		t.Fatal("open with both slots damaged succeeded")
	}
	if n := mem.InUse(); n != 0 {
		t.Fatalf("failed open left %d cells in use", n)
	}
}
