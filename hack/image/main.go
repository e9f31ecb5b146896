// Command image assembles a container image from files on this machine and
// writes it as an OCI image layout archive that `ctr images import` loads.
//
// It exists because the machines that build mailfleet have no Docker engine
// and reach no container registry, yet the single-node cluster under
// hack/cluster needs images: every byte of them comes from files built or
// installed here (Go builds, Debian packages). hack/image/images.sh runs it
// once per image; see hack/image/README.md.
//
//	go run ./hack/image -ref mailfleet.test/NAME:TAG -out bin/images/NAME.tar \
//	  -platform linux/amd64 [-platform linux/arm64] \
//	  -file SRC=DST[:MODE[:UID:GID]] (SRC may contain {arch}) \
//	  -user 65532:65532 -entrypoint /usr/local/bin/x [-cmd ARG]... \
//	  [-env K=V]... [-workdir DIR] -base static|none
//
// The output is deterministic: file times are SOURCE_DATE_EPOCH (or -epoch,
// or 0), entries are sorted and owners are numeric, so the same inputs give
// the same digest; an output whose bytes would not change is not rewritten.
// It prints REF@DIGEST on stdout.
package main

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "hack/image:", err)
		os.Exit(1)
	}
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	ref, out, base, user, workdir string
	platforms, files, links, dirs listFlag
	caps, accounts                listFlag
	entrypoint, cmd, env, labels  listFlag
	epoch                         int64
	caCerts, zoneinfo             string
	checkELF                      bool
	workdirSet, userSet           bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.ref, "ref", "", "image name, e.g. mailfleet.test/mailfleet:dev (required)")
	fs.StringVar(&o.out, "out", "", "output OCI layout archive, e.g. bin/images/mailfleet.tar (required)")
	fs.StringVar(&o.base, "base", "none", "static: what distroless/static:nonroot holds (users, CA certificates, tzdata, /tmp); none: only the given files")
	fs.StringVar(&o.user, "user", "", "config User (default: 65532 with -base static)")
	fs.StringVar(&o.workdir, "workdir", "", "config WorkingDir (default: /home/nonroot with -base static)")
	fs.Var(&o.platforms, "platform", "OS/ARCH[/VARIANT], repeatable; two or more make an image index")
	fs.Var(&o.files, "file", "SRC=DST[:MODE[:UID:GID]], repeatable; {arch} in SRC is the platform's architecture; MODE is octal (default 0755 for executables, else 0644)")
	fs.Var(&o.links, "link", "DST=TARGET: a symbolic link, repeatable")
	fs.Var(&o.dirs, "dir", "DST[:MODE[:UID:GID]]: an (empty) directory, repeatable")
	fs.Var(&o.caps, "cap", "DST=CAP[,CAP]: file capabilities (e.g. net_bind_service) on a -file, repeatable")
	fs.Var(&o.accounts, "account", "NAME:UID:GID[:HOME]: one more user and group in the static base's /etc/passwd and /etc/group")
	fs.Var(&o.entrypoint, "entrypoint", "config Entrypoint element, repeatable")
	fs.Var(&o.cmd, "cmd", "config Cmd element, repeatable")
	fs.Var(&o.env, "env", "K=V, repeatable; replaces a default of the same name")
	fs.Var(&o.labels, "label", "K=V config label, repeatable")
	fs.Int64Var(&o.epoch, "epoch", -1, "file and config times, Unix seconds (default: $SOURCE_DATE_EPOCH, else 0)")
	fs.StringVar(&o.caCerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle for -base static (Debian's ca-certificates)")
	fs.StringVar(&o.zoneinfo, "zoneinfo", "/usr/share/zoneinfo", "time zone database for -base static (Debian's tzdata)")
	fs.BoolVar(&o.checkELF, "check-elf", true, "fail when an ELF file's machine is not its platform's architecture")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "workdir":
			o.workdirSet = true
		case "user":
			o.userSet = true
		}
	})
	if o.ref == "" || o.out == "" {
		return nil, errors.New("-ref and -out are required")
	}
	if len(o.platforms) == 0 {
		return nil, errors.New("at least one -platform is required")
	}
	if o.base != "static" && o.base != "none" {
		return nil, fmt.Errorf("-base %q: want static or none", o.base)
	}
	if o.base != "static" && len(o.accounts) > 0 {
		return nil, errors.New("-account needs -base static (it extends its /etc/passwd)")
	}
	if o.epoch < 0 {
		o.epoch = 0
		if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a Unix time", s)
			}
			o.epoch = n
		}
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	mtime := time.Unix(o.epoch, 0).UTC()

	platforms := make([]v1.Platform, len(o.platforms))
	for i, s := range o.platforms {
		p, err := v1.ParsePlatform(s)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return fmt.Errorf("-platform %q: want OS/ARCH[/VARIANT]", s)
		}
		platforms[i] = *p
	}

	// The base layer holds nothing architecture-specific, so every platform
	// shares the one blob.
	var baseLayer v1.Layer
	if o.base == "static" {
		t, err := staticBase(o)
		if err != nil {
			return err
		}
		if baseLayer, err = t.layer(mtime); err != nil {
			return err
		}
	}

	var images []v1.Image
	for _, p := range platforms {
		img, err := buildImage(o, p, baseLayer, mtime)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		images = append(images, img)
	}

	digest, size, err := writeArchive(o.out, o.ref, platforms, images, mtime)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "hack/image: %s: %s@%s, %d platform(s), %.1f MiB\n", o.out, o.ref, digest, len(platforms), float64(size)/(1<<20))
	fmt.Fprintf(stdout, "%s@%s\n", o.ref, digest)
	return nil
}

// buildImage is one platform's image: the base layer (if any), then one
// layer with the -file, -link and -dir entries.
func buildImage(o *options, p v1.Platform, baseLayer v1.Layer, mtime time.Time) (v1.Image, error) {
	t, err := appTree(o, p)
	if err != nil {
		return nil, err
	}
	appLayer, err := t.layer(mtime)
	if err != nil {
		return nil, err
	}

	cfg := v1.Config{WorkingDir: o.workdir, Entrypoint: o.entrypoint, Cmd: o.cmd}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if o.base == "static" {
		// What distroless/static:nonroot's own config sets.
		env = append(env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")
		cfg.User = "65532"
		cfg.WorkingDir = "/home/nonroot"
	}
	if o.userSet {
		cfg.User = o.user
	}
	if o.workdirSet {
		cfg.WorkingDir = o.workdir
	}
	for _, kv := range o.env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("-env %q: want K=V", kv)
		}
		env = setEnv(env, k, kv)
	}
	cfg.Env = env
	if len(o.labels) > 0 {
		cfg.Labels = map[string]string{}
		for _, kv := range o.labels {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("-label %q: want K=V", kv)
			}
			cfg.Labels[k] = v
		}
	}

	created := v1.Time{Time: mtime}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Variant:      p.Variant,
		Created:      created,
		Config:       cfg,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	var adds []mutate.Addendum
	if baseLayer != nil {
		adds = append(adds, mutate.Addendum{Layer: baseLayer, MediaType: types.OCILayer,
			History: v1.History{Created: created, CreatedBy: "hack/image -base static"}})
	}
	adds = append(adds, mutate.Addendum{Layer: appLayer, MediaType: types.OCILayer,
		History: v1.History{Created: created, CreatedBy: "hack/image -file/-link/-dir"}})
	return mutate.Append(img, adds...)
}

// splitSpec splits the value spec of flag at its first "=", neither side
// empty, as want shows.
func splitSpec(flag, spec, want string) (string, string, error) {
	before, after, ok := strings.Cut(spec, "=")
	if !ok || before == "" || after == "" {
		return "", "", fmt.Errorf("%s %q: want %s", flag, spec, want)
	}
	return before, after, nil
}

func setEnv(env []string, key, kv string) []string {
	for i, e := range env {
		if strings.HasPrefix(e, key+"=") {
			env[i] = kv
			return env
		}
	}
	return append(env, kv)
}

// appTree is the application layer's content for platform p.
func appTree(o *options, p v1.Platform) (tree, error) {
	t := tree{}
	for _, spec := range o.dirs {
		dst, rest, _ := strings.Cut(spec, ":")
		e := &entry{typ: typeDir, mode: 0o755}
		if err := parseModeOwner(rest, e); err != nil {
			return nil, fmt.Errorf("-dir %q: %w", spec, err)
		}
		if err := t.add(dst, e); err != nil {
			return nil, err
		}
	}
	for _, spec := range o.files {
		src, rest, err := splitSpec("-file", spec, "SRC=DST[:MODE[:UID:GID]]")
		if err != nil {
			return nil, err
		}
		dst, modeOwner, _ := strings.Cut(rest, ":")
		src = strings.ReplaceAll(src, "{arch}", p.Architecture)
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("-file %q: %w", spec, err)
		}
		e := &entry{typ: typeReg, data: data, mode: 0o644}
		if fi, err := os.Stat(src); err == nil && fi.Mode()&0o100 != 0 {
			e.mode = 0o755
		}
		if err := parseModeOwner(modeOwner, e); err != nil {
			return nil, fmt.Errorf("-file %q: %w", spec, err)
		}
		if o.checkELF {
			if err := checkELF(src, data, p); err != nil {
				return nil, err
			}
		}
		if err := t.add(dst, e); err != nil {
			return nil, err
		}
	}
	for _, spec := range o.links {
		dst, target, err := splitSpec("-link", spec, "DST=TARGET")
		if err != nil {
			return nil, err
		}
		if err := t.add(dst, &entry{typ: typeSymlink, mode: 0o777, linkname: target}); err != nil {
			return nil, err
		}
	}
	for _, spec := range o.caps {
		dst, names, err := splitSpec("-cap", spec, "DST=CAP[,CAP]")
		if err != nil {
			return nil, err
		}
		e := t[cleanPath(dst)]
		if e == nil || e.typ != typeReg {
			return nil, fmt.Errorf("-cap %q: %s is not a -file", spec, dst)
		}
		v, err := fileCaps(strings.Split(names, ","))
		if err != nil {
			return nil, fmt.Errorf("-cap %q: %w", spec, err)
		}
		e.xattrs = map[string]string{"security.capability": v}
	}
	return t, nil
}

// parseModeOwner reads "[MODE[:UID:GID]]" into e.
func parseModeOwner(s string, e *entry) error {
	if s == "" {
		return nil
	}
	parts := strings.Split(s, ":")
	if len(parts) != 1 && len(parts) != 3 {
		return fmt.Errorf("%q: want MODE or MODE:UID:GID", s)
	}
	if parts[0] != "" {
		m, err := strconv.ParseInt(parts[0], 8, 64)
		if err != nil || m < 0 || m > 0o7777 {
			return fmt.Errorf("mode %q: want octal such as 0755", parts[0])
		}
		e.mode = m
	}
	if len(parts) == 3 {
		uid, err1 := strconv.Atoi(parts[1])
		gid, err2 := strconv.Atoi(parts[2])
		if err1 != nil || err2 != nil || uid < 0 || gid < 0 {
			return fmt.Errorf("owner %s:%s: want numeric UID:GID", parts[1], parts[2])
		}
		e.uid, e.gid = uid, gid
	}
	return nil
}

// elfMachines maps GOARCH-style architectures to ELF machines. The check
// catches a build that ignored GOARCH, or a {arch} that was not substituted.
var elfMachines = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"386":     elf.EM_386,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"riscv64": elf.EM_RISCV,
}

func checkELF(src string, data []byte, p v1.Platform) error {
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return nil
	}
	want, known := elfMachines[p.Architecture]
	if !known {
		return nil
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if f.Machine != want {
		return fmt.Errorf("%s is an ELF file for %v, not %s (-check-elf=false to allow it)", src, f.Machine, p.Architecture)
	}
	return nil
}

// capBits are the capabilities -cap knows (linux/capability.h numbers).
var capBits = map[string]uint{
	"chown":            0,
	"net_bind_service": 10,
	"net_admin":        12,
	"net_raw":          13,
	"sys_time":         25,
}

// fileCaps is a security.capability xattr value (struct vfs_cap_data,
// revision 2) granting names as permitted and effective: how a non-root
// process gets, say, a low port without running as root.
func fileCaps(names []string) (string, error) {
	var permitted uint32
	for _, n := range names {
		bit, ok := capBits[strings.TrimPrefix(strings.ToLower(strings.TrimSpace(n)), "cap_")]
		if !ok {
			return "", fmt.Errorf("unknown capability %q", n)
		}
		permitted |= 1 << bit
	}
	const revision2, effective = 0x02000000, 0x1
	var b [20]byte
	le32(b[0:], revision2|effective)
	le32(b[4:], permitted)
	return string(b[:]), nil
}

func le32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// layer turns the tree into a gzip-compressed OCI layer. The tar stream is
// built in memory (the largest input is a ~70 MiB binary) and the compressed
// bytes are cached, so they are computed once for the digest and the write.
func (t tree) layer(mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	if err := t.writeTar(&buf, mtime); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.DefaultCompression), tarball.WithCompressedCaching)
}

func cleanPath(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}
