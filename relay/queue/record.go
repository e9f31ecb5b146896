package queue

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/mailfleet/mailfleet/relay/spool"
)

// meta is what travels in front of every stored message: the envelope and
// where the body is.
type meta struct {
	Envelope spool.Envelope `json:"envelope"`
	// Attempts counts the deliveries tried before this copy was queued.
	Attempts int `json:"attempts,omitempty"`
	// Size is the body's length in bytes.
	Size int64 `json:"size"`
	// Parts is how many messages of the body stream hold the body; 0 means
	// the body follows the metadata in the same record, or is in a pack.
	Parts int `json:"parts,omitempty"`
	// Pack, on <prefix>.q, says the body is that of a record in a held
	// pack; the record itself then carries none.
	Pack *packRef `json:"pack,omitempty"`
}

// packRef names a record in a held pack: the pack's stream sequence and
// where the record's length prefix starts in the pack.
type packRef struct {
	Seq    uint64 `json:"seq"`
	Offset int    `json:"offset"`
}

// A record is one queued message as stored in a stream message:
//
//	uint32 big-endian length of the JSON metadata | metadata | inline body
//
// A pack is several records in one stream message, the unit of the group
// commit:
//
//	(uint32 big-endian record length | record)*
const lenSize = 4

var errCorrupt = errors.New("corrupt queue record")

func encodeRecord(m meta, body []byte) ([]byte, error) {
	js, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode envelope of %s: %w", m.Envelope.ID, err)
	}
	out := make([]byte, lenSize, lenSize+len(js)+len(body))
	binary.BigEndian.PutUint32(out, uint32(len(js)))
	out = append(out, js...)
	return append(out, body...), nil
}

// decodeRecord returns the metadata and the inline body, which aliases b.
func decodeRecord(b []byte) (meta, []byte, error) {
	var m meta
	if len(b) < lenSize {
		return m, nil, errCorrupt
	}
	n := int(binary.BigEndian.Uint32(b))
	if n > len(b)-lenSize {
		return m, nil, errCorrupt
	}
	if err := json.Unmarshal(b[lenSize:lenSize+n], &m); err != nil {
		return m, nil, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	body := b[lenSize+n:]
	if m.Pack != nil && (m.Parts > 0 || len(body) > 0) {
		return m, nil, fmt.Errorf("%w: message %s names a pack and carries a body", errCorrupt, m.Envelope.ID)
	}
	if m.Parts == 0 && m.Pack == nil && int64(len(body)) != m.Size {
		return m, nil, fmt.Errorf("%w: message %s has %d body bytes, want %d", errCorrupt, m.Envelope.ID, len(body), m.Size)
	}
	return m, body, nil
}

// appendPacked adds one record to a pack.
func appendPacked(pack, record []byte) []byte {
	pack = binary.BigEndian.AppendUint32(pack, uint32(len(record)))
	return append(pack, record...)
}

// packed is one record of a pack and where its length prefix starts.
type packed struct {
	record []byte
	offset int
}

// unpack splits a pack into its records, which alias b.
func unpack(b []byte) ([]packed, error) {
	var out []packed
	for off := 0; off < len(b); {
		r, err := recordAt(b, off)
		if err != nil {
			return nil, err
		}
		out = append(out, packed{record: r, offset: off})
		off += lenSize + len(r)
	}
	return out, nil
}

// packCount is how many records a pack holds, up to the first that does
// not read.
func packCount(b []byte) int {
	n := 0
	for off := 0; off < len(b); n++ {
		r, err := recordAt(b, off)
		if err != nil {
			break
		}
		off += lenSize + len(r)
	}
	return n
}

// recordAt is the record whose length prefix starts at off in pack.
func recordAt(pack []byte, off int) ([]byte, error) {
	if off < 0 || off > len(pack)-lenSize {
		return nil, errCorrupt
	}
	n := int(binary.BigEndian.Uint32(pack[off:]))
	if n > len(pack)-off-lenSize {
		return nil, errCorrupt
	}
	return pack[off+lenSize : off+lenSize+n], nil
}

// token makes a queue id safe as one subject token: ids may hold dots (a
// pod name) that NATS would read as token separators.
func token(id string) string {
	return hex.EncodeToString([]byte(id))
}
