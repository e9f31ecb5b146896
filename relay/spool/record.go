package spool

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strconv"
)

// A segment is a sequence of records, each laid out as
//
//	offset  size  field
//	0       3     magic "MFL"
//	3       1     format version, 1
//	4       4     envelope length n, little-endian, 1..maxEnvelope
//	8       4     body length m, little-endian
//	12      4     CRC-32C (Castagnoli) of envelope and body, little-endian
//	16      n     the Envelope as JSON
//	16+n    m     the body, byte for byte as the SMTP server wrote it
//
// The header is fixed-size so a scan can check the lengths against the file
// before trusting them, and the CRC covers everything after it, so a record
// cut short or half-written by a crash is told apart from a whole one. Four
// bytes of body length allow 4 GiB, far above any SMTP size limit; a new
// version byte is how a later format would grow.
const (
	headerSize    = 16
	recordVersion = 1

	// maxEnvelope bounds the envelope JSON, so a damaged length cannot make
	// a scan allocate gigabytes. A few thousand recipients fit comfortably.
	maxEnvelope = 4 << 20
	maxBody     = math.MaxUint32
)

var (
	recordMagic = [3]byte{'M', 'F', 'L'}
	// castagnoli is CRC-32C, which amd64 and arm64 compute in hardware.
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

var (
	errEnvelopeTooLong = errors.New("envelope too long")
	errBodyTooLarge    = errors.New("message body over 4 GiB")
)

// header is the fixed part of a record.
type header struct {
	envLen  uint32
	bodyLen uint32
	crc     uint32
}

func (h header) put(b []byte) {
	copy(b, recordMagic[:])
	b[3] = recordVersion
	binary.LittleEndian.PutUint32(b[4:], h.envLen)
	binary.LittleEndian.PutUint32(b[8:], h.bodyLen)
	binary.LittleEndian.PutUint32(b[12:], h.crc)
}

// parseHeader checks what can be checked without the rest of the record.
func parseHeader(b []byte) (header, error) {
	if !bytes.Equal(b[:3], recordMagic[:]) {
		return header{}, errors.New("bad magic")
	}
	if b[3] != recordVersion {
		return header{}, fmt.Errorf("unknown record version %d", b[3])
	}
	h := header{
		envLen:  binary.LittleEndian.Uint32(b[4:]),
		bodyLen: binary.LittleEndian.Uint32(b[8:]),
		crc:     binary.LittleEndian.Uint32(b[12:]),
	}
	if h.envLen == 0 || h.envLen >= maxEnvelope {
		return header{}, fmt.Errorf("envelope length %d out of range", h.envLen)
	}
	return h, nil
}

// size is the length of the whole record.
func (h header) size() int64 { return headerSize + int64(h.envLen) + int64(h.bodyLen) }

// scanned is one valid record found by scanRecords.
type scanned struct {
	off int64 // where the record starts in its segment
	h   header
	env Envelope
}

// scanRecords reads the records of a segment of size bytes from r, calling
// visit for each valid one in order. It stops at the first record that is not
// whole and intact, and returns where the valid records end and, when that is
// before size, why. Everything from there on is the tail of a batch that a
// crash cut short: no waiter in it was released, so no client was told its
// message was accepted. Bytes on disk are untrusted here: a length is checked
// against the file before anything is read or allocated for it.
func scanRecords(r io.Reader, size int64, visit func(scanned)) (int64, error) {
	br := bufio.NewReaderSize(r, int(min(size, 1<<20)))
	var hdr [headerSize]byte
	var envBuf []byte
	chunk := make([]byte, 64<<10)
	var off int64
	for off < size {
		if size-off < headerSize {
			return off, fmt.Errorf("%d bytes, too short for a record header", size-off)
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return off, fmt.Errorf("read record header: %w", err)
		}
		h, err := parseHeader(hdr[:])
		if err != nil {
			return off, err
		}
		if h.size() > size-off {
			return off, fmt.Errorf("record of %d bytes runs past the end of the segment", h.size())
		}
		if cap(envBuf) < int(h.envLen) {
			envBuf = make([]byte, h.envLen)
		}
		envBuf = envBuf[:h.envLen]
		if _, err := io.ReadFull(br, envBuf); err != nil {
			return off, fmt.Errorf("read envelope: %w", err)
		}
		crc := crc32.Update(0, castagnoli, envBuf)
		for left := int64(h.bodyLen); left > 0; {
			n, err := io.ReadFull(br, chunk[:min(left, int64(len(chunk)))])
			crc = crc32.Update(crc, castagnoli, chunk[:n])
			left -= int64(n)
			if err != nil {
				return off, fmt.Errorf("read body: %w", err)
			}
		}
		if crc != h.crc {
			return off, fmt.Errorf("CRC mismatch: header %08x, data %08x", h.crc, crc)
		}
		// The CRC matched, so these are the bytes Begin wrote; a failure here
		// would be a bug, but it still must not index a message it cannot name.
		var env Envelope
		if err := json.Unmarshal(envBuf, &env); err != nil {
			return off, fmt.Errorf("decode envelope: %w", err)
		}
		if err := checkID(env.ID); err != nil {
			return off, fmt.Errorf("envelope id %q: %w", env.ID, err)
		}
		visit(scanned{off: off, h: h, env: env})
		off += h.size()
	}
	return off, nil
}

// A segment's .done file lists the records delivered from it, one
// "<offset> <id>\n" line each. The offset names the record: an id may come
// back (a message removed, then the same id committed again into the same
// segment), an offset cannot. The id is there for people reading the file
// and as a check.

func appendDone(b []byte, off int64, id string) []byte {
	b = strconv.AppendInt(b, off, 10)
	b = append(b, ' ')
	b = append(b, id...)
	return append(b, '\n')
}

// parseDone reads a .done file into offset → id. A line without its newline
// (cut by a crash) or otherwise malformed is skipped: at worst its message is
// delivered again, which at-least-once delivery allows.
func parseDone(b []byte) map[int64]string {
	done := make(map[int64]string)
	for {
		line, rest, ok := bytes.Cut(b, []byte{'\n'})
		if !ok {
			return done
		}
		b = rest
		offText, id, ok := bytes.Cut(line, []byte{' '})
		if !ok {
			continue
		}
		off, err := strconv.ParseInt(string(offText), 10, 64)
		if err != nil || off < 0 || checkID(string(id)) != nil {
			continue
		}
		done[off] = string(id)
	}
}
