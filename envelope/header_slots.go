package envelope

// headerSlots tracks a File's two header slots: the sequence number each
// holds, and which writes of them a Sync has made durable. Header slot
// writes are numbered 1, 2, …; a slot's number is that of its last write.
// A Sync covers the writes numbered up to where it started, so a slot
// written while a Sync runs still counts as not durable.
type headerSlots struct {
	seq    [2]uint64 // the sequence number in each slot, 0 if the slot is invalid
	wrote  [2]uint64 // the number of each slot's last write
	synced uint64    // writes up to this number are on stable storage
}

// target returns the slot the next header goes to: the one with the older
// sequence number, so that the other keeps a complete header.
func (s *headerSlots) target() int {
	if s.seq[1] <= s.seq[0] {
		return 1
	}
	return 0
}

// nextSeq returns the sequence number of the next header written.
func (s *headerSlots) nextSeq() uint64 { return max(s.seq[0], s.seq[1]) + 1 }

// writes returns the number of the last slot write.
func (s *headerSlots) writes() uint64 { return max(s.wrote[0], s.wrote[1]) }

// unsynced reports whether slot i was written since the last Sync that
// covered it.
func (s *headerSlots) unsynced(i int) bool { return s.wrote[i] > s.synced }

// written notes that slot i now holds sequence number seq.
func (s *headerSlots) written(i int, seq uint64) {
	s.wrote[i] = s.writes() + 1
	s.seq[i] = seq
}

// syncedUpTo notes that a Sync made slot writes up to number n durable.
func (s *headerSlots) syncedUpTo(n uint64) { s.synced = max(s.synced, n) }
