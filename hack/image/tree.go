package main

import (
	"archive/tar"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

const (
	typeReg     = tar.TypeReg
	typeDir     = tar.TypeDir
	typeSymlink = tar.TypeSymlink
)

// entry is one file, directory or symbolic link of a layer.
type entry struct {
	typ      byte
	mode     int64
	uid, gid int
	data     []byte
	linkname string
	xattrs   map[string]string
	implicit bool // a parent directory nobody asked for
}

// tree is a layer's content by clean path without the leading slash.
type tree map[string]*entry

// add puts e at p, with root-owned 0755 parent directories where none were
// given (as a Dockerfile COPY creates them). Two entries for one path are an
// error, except that an explicit directory replaces an implicit one.
func (t tree) add(p string, e *entry) error {
	name := cleanPath(p)
	if name == "" {
		return fmt.Errorf("%q: not a path inside the image", p)
	}
	if old, ok := t[name]; ok {
		if !(old.implicit && old.typ == typeDir && e.typ == typeDir) {
			return fmt.Errorf("/%s is given twice", name)
		}
	}
	t[name] = e
	for dir := parent(name); dir != ""; dir = parent(dir) {
		if old, ok := t[dir]; ok {
			if old.typ != typeDir {
				return fmt.Errorf("/%s is a parent of /%s but not a directory", dir, name)
			}
			continue
		}
		t[dir] = &entry{typ: typeDir, mode: 0o755, implicit: true}
	}
	return nil
}

func parent(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return ""
	}
	return name[:i]
}

// writeTar writes the tree sorted by path (a parent sorts before its
// children), with numeric owners and every time set to mtime, so that equal
// trees give equal bytes.
func (t tree) writeTar(w io.Writer, mtime time.Time) error {
	names := make([]string, 0, len(t))
	for n := range t {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tar.NewWriter(w)
	for _, n := range names {
		e := t[n]
		hdr := &tar.Header{
			Typeflag: e.typ,
			Name:     n,
			Mode:     e.mode,
			Uid:      e.uid,
			Gid:      e.gid,
			ModTime:  mtime,
			Linkname: e.linkname,
			Format:   tar.FormatPAX,
		}
		switch e.typ {
		case typeDir:
			hdr.Name += "/"
		case typeReg:
			hdr.Size = int64(len(e.data))
		}
		if len(e.xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		} else {
			// USTAR where it can hold the entry: the plainest format every
			// unpacker reads.
			hdr.Format = tar.FormatUnknown
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("/%s: %w", n, err)
		}
		if e.typ == typeReg {
			if _, err := tw.Write(e.data); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}
