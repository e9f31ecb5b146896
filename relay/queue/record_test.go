package queue

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/mailfleet/mailfleet/relay/spool"
)

func TestRecordRoundTrip(t *testing.T) {
	env := spool.Envelope{ID: "1_2.node", APIUser: "acme", LabelID: "7", From: "", To: []string{"a@x", "b@y"},
		ReceivedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	cases := []struct {
		name string
		m    meta
		body []byte
	}{
		{"inline", meta{Envelope: env, Size: 5}, []byte("hello")},
		{"empty", meta{Envelope: env}, nil},
		{"in parts", meta{Envelope: env, Size: 1 << 20, Parts: 2, Attempts: 3}, nil},
		{"held in a pack", meta{Envelope: env, Size: 100_000, Pack: &packRef{Seq: 42, Offset: 4711}}, nil},
	}
	var pack []byte
	for _, c := range cases {
		r, err := encodeRecord(c.m, c.body)
		if err != nil {
			t.Fatal(err)
		}
		m, body, err := decodeRecord(r)
		if err != nil || !reflect.DeepEqual(m, c.m) || !bytes.Equal(body, c.body) {
			t.Fatalf("%s: got %+v %q %v", c.name, m, body, err)
		}
		pack = appendPacked(pack, r)
	}
	records, err := unpack(pack)
	if err != nil || len(records) != len(cases) {
		t.Fatalf("unpack: %d records, %v", len(records), err)
	}
	if n := packCount(pack); n != len(cases) {
		t.Fatalf("packCount: %d, want %d", n, len(cases))
	}
	for _, r := range records {
		if again, err := recordAt(pack, r.offset); err != nil || !bytes.Equal(again, r.record) {
			t.Fatalf("record at offset %d: %d bytes, %v", r.offset, len(again), err)
		}
	}
}

func TestDecodeRefusesDamage(t *testing.T) {
	r, _ := encodeRecord(meta{Envelope: spool.Envelope{ID: "x"}, Size: 3}, []byte("abc"))
	for name, b := range map[string][]byte{
		"short":          r[:2],
		"length too big": append([]byte{0xff, 0xff, 0xff, 0xff}, r[4:]...),
		"body cut":       r[:len(r)-1],
		"not JSON":       append([]byte{0, 0, 0, 3}, "abc"...),
	} {
		if _, _, err := decodeRecord(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	held, _ := encodeRecord(meta{Envelope: spool.Envelope{ID: "x"}, Size: 3, Pack: &packRef{Seq: 1}}, []byte("abc"))
	if _, _, err := decodeRecord(held); err == nil {
		t.Error("decoded a record that names a pack and carries a body")
	}
	if _, err := unpack([]byte{0, 0, 0, 9, 1}); err == nil {
		t.Error("unpacked a pack whose record runs past its end")
	}
	if n := packCount(append(appendPacked(nil, r), 0, 0, 0, 9, 1)); n != 1 {
		t.Errorf("packCount counted %d records of a pack whose second runs past its end, want 1", n)
	}
}

// FuzzUnpack feeds arbitrary stream message data to the decoders: a damaged
// or foreign message in the stream must be refused, never crash a relay.
func FuzzUnpack(f *testing.F) {
	r, _ := encodeRecord(meta{Envelope: spool.Envelope{ID: "x", To: []string{"a@b"}}, Size: 2}, []byte("hi"))
	f.Add(appendPacked(nil, r))
	f.Add(r)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if records, err := unpack(data); err == nil {
			if n := packCount(data); n != len(records) {
				t.Fatalf("packCount %d, unpack %d records", n, len(records))
			}
			for _, rec := range records {
				decodeRecord(rec.record)
				if again, err := recordAt(data, rec.offset); err != nil || !bytes.Equal(again, rec.record) {
					t.Fatalf("record at offset %d reads back as %d bytes, %v", rec.offset, len(again), err)
				}
			}
		}
		if m, body, err := decodeRecord(data); err == nil && m.Parts == 0 && m.Pack == nil && int64(len(body)) != m.Size {
			t.Fatalf("decoded %d body bytes for size %d", len(body), m.Size)
		}
	})
}
