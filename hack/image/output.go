package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The annotations on index.json's descriptor that name the image.
// containerd's importer (ctr images import, containerd 1.6) takes the name
// from io.containerd.image.name as it is; it would prefix a bare
// org.opencontainers.image.ref.name, or drop a full one, so both are set:
// the first for containerd, the second for other OCI layout readers.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// writeArchive writes an OCI image layout holding the image (one platform)
// or an image index of them (several) as a tar archive at out, and returns
// the digest index.json names and the archive's size. The archive is
// written only when its bytes change, so an unchanged image keeps its file
// (and make's view of it) as it was.
func writeArchive(out, ref string, platforms []v1.Platform, images []v1.Image, mtime time.Time) (v1.Hash, int64, error) {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return v1.Hash{}, 0, err
	}
	dir := out + ".layout.tmp"
	if err := os.RemoveAll(dir); err != nil {
		return v1.Hash{}, 0, err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	name := layout.WithAnnotations(map[string]string{annotationContainerdName: ref, annotationRefName: ref})

	var digest v1.Hash
	if len(images) == 1 {
		if digest, err = images[0].Digest(); err != nil {
			return v1.Hash{}, 0, err
		}
		if err := lp.AppendImage(images[0], name); err != nil {
			return v1.Hash{}, 0, err
		}
	} else {
		adds := make([]mutate.IndexAddendum, len(images))
		for i, img := range images {
			p := platforms[i]
			adds[i] = mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}}
		}
		idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
		if digest, err = idx.Digest(); err != nil {
			return v1.Hash{}, 0, err
		}
		if err := lp.AppendIndex(idx, name); err != nil {
			return v1.Hash{}, 0, err
		}
	}

	var buf bytes.Buffer
	if err := tarDir(&buf, dir, mtime); err != nil {
		return v1.Hash{}, 0, err
	}
	size := int64(buf.Len())
	if old, err := os.ReadFile(out); err == nil && bytes.Equal(old, buf.Bytes()) {
		return digest, size, nil
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return v1.Hash{}, 0, err
	}
	return digest, size, os.Rename(tmp, out)
}

// tarDir archives the layout directory: sorted paths, fixed times and
// owners, so equal layouts give equal archives.
func tarDir(w io.Writer, dir string, mtime time.Time) error {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime, Mode: 0o644, Typeflag: tar.TypeReg}
		if fi.IsDir() {
			hdr.Name += "/"
			hdr.Mode = 0o755
			hdr.Typeflag = tar.TypeDir
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			continue
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s: not a regular file", p)
		}
		hdr.Size = fi.Size()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}
