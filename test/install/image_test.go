package install

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// dockerStage is what the Dockerfile's final stage says about the image.
type dockerStage struct {
	from       string
	copies     []string // COPY destinations
	user       string
	entrypoint []string
	cmd        []string
	workdir    string
}

// dockerfileFinalStage reads the last FROM and the instructions after it.
// An instruction the image builder has no counterpart for is an error, so a
// Dockerfile change that the builder does not follow fails here.
func dockerfileFinalStage() (dockerStage, error) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		return dockerStage{}, err
	}
	var lines []string
	for _, l := range strings.Split(strings.ReplaceAll(string(data), "\\\n", " "), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	last := -1
	for i, l := range lines {
		if strings.HasPrefix(strings.ToUpper(l), "FROM ") {
			last = i
		}
	}
	if last < 0 {
		return dockerStage{}, fmt.Errorf("the Dockerfile has no FROM")
	}
	var st dockerStage
	fields := strings.Fields(lines[last])
	st.from = fields[len(fields)-1]
	if len(fields) > 2 && strings.EqualFold(fields[len(fields)-2], "AS") {
		st.from = fields[len(fields)-3]
	}
	for _, l := range lines[last+1:] {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "COPY":
			f := strings.Fields(rest)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				if !strings.HasPrefix(f[0], "--from=") {
					return st, fmt.Errorf("COPY option %s: the image builder has no counterpart", f[0])
				}
				f = f[1:]
			}
			if len(f) != 2 {
				return st, fmt.Errorf("%q: want COPY [--from=STAGE] SRC DST", l)
			}
			st.copies = append(st.copies, f[1])
		case "USER":
			st.user = rest
		case "WORKDIR":
			st.workdir = rest
		case "ENTRYPOINT", "CMD":
			var v []string
			if err := json.Unmarshal([]byte(rest), &v); err != nil {
				return st, fmt.Errorf("%s %s: want the exec (JSON) form: %v", instr, rest, err)
			}
			if strings.ToUpper(instr) == "CMD" {
				st.cmd = v
			} else {
				st.entrypoint = v
			}
		default:
			return st, fmt.Errorf("%q in the final stage: hack/image/images.sh does not reproduce %s; "+
				"add it there (args_mailfleet) and here", l, instr)
		}
	}
	return st, nil
}

// imageBuilder is hack/image, built once per test run.
var imageBuilder = builtOnce(func() (string, error) {
	path := filepath.Join(workDir, "image-builder")
	cmd := exec.Command("go", "build", "-o", path, "./hack/image")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./hack/image: %w\n%s", err, out)
	}
	return path, nil
})

// TestImageMatchesDockerfile: the image hack/image/images.sh builds without
// Docker (make image) holds what the Dockerfile's final stage gives: the
// distroless/static:nonroot content, the binary at the COPY destination,
// the USER and the ENTRYPOINT; for linux/amd64 and linux/arm64, with no
// shell, and the same digest every time.
//
// The binary is the one TestImageBinary builds with the Dockerfile's own go
// build command, for this machine's architecture; the other platform gets a
// copy of it (so -check-elf=false), because cross-compiling mailfleet takes
// minutes and what is tested here is the assembly, not the compiler.
func TestImageMatchesDockerfile(t *testing.T) {
	stage, err := dockerfileFinalStage()
	if err != nil {
		t.Fatal(err)
	}
	builder := imageBuilder(t)
	bin := imageBinary(t)
	dir := t.TempDir()

	script := exec.Command("bash", filepath.Join(repoRoot, "hack", "image", "images.sh"), "args", "mailfleet")
	script.Env = append(os.Environ(), "MAILFLEET_BINARY="+filepath.Join(dir, "mailfleet-{arch}"))
	out, err := script.Output()
	if err != nil {
		t.Fatalf("images.sh args mailfleet: %v\n%s", err, exitStderr(err))
	}
	args := strings.Split(strings.TrimSpace(string(out)), "\n")
	flags := flagValues(args)

	// FROM distroless/static:nonroot is -base static (the registry host
	// aside: only the image path and tag say what the base holds).
	if !strings.HasSuffix(stage.from, "/distroless/static:nonroot") {
		t.Fatalf("the Dockerfile's final stage is FROM %s; the builder reproduces distroless/static:nonroot only", stage.from)
	}
	if got := flags["-base"]; !slices.Equal(got, []string{"static"}) {
		t.Errorf("the builder's -base is %q, want static (FROM %s)", got, stage.from)
	}

	var platforms []string
	for _, p := range flags["-platform"] {
		platforms = append(platforms, strings.TrimPrefix(p, "linux/"))
	}
	if !slices.Contains(platforms, "amd64") || !slices.Contains(platforms, "arm64") {
		t.Errorf("the builder's platforms are %q, want linux/amd64 and linux/arm64", flags["-platform"])
	}
	for _, arch := range platforms {
		if err := os.Link(bin, filepath.Join(dir, "mailfleet-"+arch)); err != nil {
			if err := os.WriteFile(filepath.Join(dir, "mailfleet-"+arch), mustRead(t, bin), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}

	const ref = "mailfleet.test/mailfleet:install-test"
	build := func(name string) (string, string) {
		archive := filepath.Join(dir, name)
		cmd := exec.Command(builder, append([]string{"-ref", ref, "-out", archive, "-check-elf=false"}, args...)...)
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", builder, strings.Join(cmd.Args[1:], " "), err, stderr.Bytes())
		}
		return archive, strings.TrimSpace(string(out))
	}
	archive, printed := build("one.tar")
	archive2, printed2 := build("two.tar")
	if printed != printed2 || !bytes.Equal(mustRead(t, archive), mustRead(t, archive2)) {
		t.Errorf("two builds of the same input differ: %s and %s", printed, printed2)
	}

	idx := readArchive(t, archive, filepath.Join(dir, "layout"))
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json has %d entries, want 1", len(im.Manifests))
	}
	top := im.Manifests[0]
	if got := top.Annotations["io.containerd.image.name"]; got != ref {
		t.Errorf("index.json's io.containerd.image.name is %q, want %q (ctr images import names the image by it)", got, ref)
	}
	if want := ref + "@" + top.Digest.String(); printed != want {
		t.Errorf("the builder printed %q, want %q", printed, want)
	}
	if !top.MediaType.IsIndex() {
		t.Fatalf("index.json points at a %s, want an image index (multi-arch)", top.MediaType)
	}
	multi, err := idx.ImageIndex(top.Digest)
	if err != nil {
		t.Fatal(err)
	}
	mm, err := multi.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range mm.Manifests {
		if d.Platform == nil {
			t.Fatalf("manifest %s has no platform", d.Digest)
		}
		got = append(got, d.Platform.OS+"/"+d.Platform.Architecture)
		img, err := multi.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(d.Platform.Architecture, func(t *testing.T) {
			checkImage(t, img, stage, *d.Platform)
		})
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("the index holds %q, want linux/amd64 and linux/arm64", got)
	}
}

// checkImage compares one platform's image with the Dockerfile's stage.
func checkImage(t *testing.T, img v1.Image, stage dockerStage, p v1.Platform) {
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != p.OS || cfg.Architecture != p.Architecture {
		t.Errorf("config is for %s/%s, listed as %s/%s", cfg.OS, cfg.Architecture, p.OS, p.Architecture)
	}
	c := cfg.Config
	if c.User != stage.user {
		t.Errorf("User = %q, the Dockerfile's USER is %q", c.User, stage.user)
	}
	if !slices.Equal(c.Entrypoint, stage.entrypoint) {
		t.Errorf("Entrypoint = %q, the Dockerfile's ENTRYPOINT is %q", c.Entrypoint, stage.entrypoint)
	}
	if !slices.Equal(c.Cmd, stage.cmd) {
		t.Errorf("Cmd = %q, the Dockerfile's CMD is %q", c.Cmd, stage.cmd)
	}
	// distroless/static:nonroot's WORKDIR, unless the stage sets one.
	wantDir := "/home/nonroot"
	if stage.workdir != "" {
		wantDir = stage.workdir
	}
	if c.WorkingDir != wantDir {
		t.Errorf("WorkingDir = %q, want %q", c.WorkingDir, wantDir)
	}
	if !slices.Contains(c.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") {
		t.Errorf("Env %q lacks distroless's SSL_CERT_FILE", c.Env)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) < 2 {
		t.Fatalf("%d layers, want the base and the COPY", len(layers))
	}
	all := map[string]*tar.Header{}
	var data, baseData map[string][]byte
	var last map[string]*tar.Header
	for i, l := range layers {
		files, contents := layerFiles(t, l)
		for n, h := range files {
			all[n] = h
		}
		if i == 0 {
			baseData = contents
		}
		if i == len(layers)-1 {
			last, data = files, contents
		}
	}

	// The last layer is the COPY: its files are exactly the COPY
	// destinations, as COPY --from=build leaves them (root, 0755).
	var copied, want []string
	for n, h := range last {
		if h.Typeflag != tar.TypeDir {
			copied = append(copied, n)
		}
	}
	for _, d := range stage.copies {
		want = append(want, path.Clean(d))
	}
	slices.Sort(copied)
	slices.Sort(want)
	if !slices.Equal(copied, want) {
		t.Errorf("the last layer holds %q, the Dockerfile copies to %q", copied, want)
	}
	for _, n := range want {
		if h := last[n]; h != nil && (h.Mode&0o777 != 0o755 || h.Uid != 0 || h.Gid != 0) {
			t.Errorf("%s: mode %o owner %d:%d, want 0755 root", n, h.Mode, h.Uid, h.Gid)
		}
	}
	if bin := data["/usr/local/bin/mailfleet"]; !bytes.HasPrefix(bin, []byte("\x7fELF")) {
		t.Error("/usr/local/bin/mailfleet is not an ELF binary")
	}

	// What distroless/static:nonroot gives the binary.
	for n, check := range map[string]func(h *tar.Header) bool{
		"/etc/passwd":                        isFile,
		"/etc/group":                         isFile,
		"/etc/nsswitch.conf":                 isFile,
		"/etc/ssl/certs/ca-certificates.crt": func(h *tar.Header) bool { return isFile(h) && h.Size > 10000 },
		"/usr/share/zoneinfo/Etc/UTC":        isFile,
		"/usr/share/zoneinfo/Europe/Berlin":  isFile,
		// Debian's UTC is a link to Etc/UTC; Go's time package follows it.
		"/usr/share/zoneinfo/UTC": func(h *tar.Header) bool { return isFile(h) || h.Linkname == "Etc/UTC" },
		"/tmp":                    func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Mode&0o7777 == 0o1777 },
		"/home/nonroot":           func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Uid == 65532 && h.Gid == 65532 },
	} {
		if h := all[n]; h == nil || !check(h) {
			t.Errorf("%s is missing or wrong: %+v", n, h)
		}
	}
	passwd := baseData["/etc/passwd"]
	for _, line := range []string{"root:x:0:0:", "nonroot:x:65532:65532:", "nobody:x:65534:65534:"} {
		if !strings.Contains(string(passwd), "\n"+line) && !strings.HasPrefix(string(passwd), line) {
			t.Errorf("/etc/passwd lacks %s...:\n%s", line, passwd)
		}
	}
	if !strings.Contains(string(passwd), ":/home/nonroot:") {
		t.Errorf("nonroot's home is not /home/nonroot:\n%s", passwd)
	}

	// No shell and no other program: the COPY is the only executable.
	for _, n := range []string{"/bin/sh", "/bin/bash", "/bin/busybox", "/usr/bin/sh"} {
		if all[n] != nil {
			t.Errorf("%s is in the image; distroless/static has no shell", n)
		}
	}
	for n, h := range all {
		if h.Typeflag == tar.TypeReg && h.Mode&0o111 != 0 && !slices.Contains(want, n) {
			t.Errorf("%s is executable; only the COPY destinations should be", n)
		}
	}
}

func isFile(h *tar.Header) bool { return h.Typeflag == tar.TypeReg && h.Size > 0 }

// layerFiles lists a layer's entries by absolute path, with the contents of
// its regular files.
func layerFiles(t *testing.T, l v1.Layer) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files, data := map[string]*tar.Header{}, map[string][]byte{}
	walkTar(t, rc, func(h *tar.Header, content io.Reader) (err error) {
		name := path.Clean("/" + h.Name)
		files[name] = h
		if h.Typeflag == tar.TypeReg {
			data[name], err = io.ReadAll(content)
		}
		return err
	})
	return files, data
}

// walkTar calls fn with each entry of the tar stream r and its content,
// failing the test on an error of the stream's or of fn's.
func walkTar(t *testing.T, r io.Reader, fn func(h *tar.Header, content io.Reader) error) {
	t.Helper()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := fn(h, tr); err != nil {
			t.Fatal(err)
		}
	}
}

// readArchive unpacks an OCI layout archive into dir and opens it.
func readArchive(t *testing.T, archive, dir string) v1.ImageIndex {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	walkTar(t, f, func(h *tar.Header, content io.Reader) (err error) {
		dst := filepath.Join(dir, filepath.FromSlash(path.Clean("/"+h.Name)))
		switch h.Typeflag {
		case tar.TypeDir:
			return os.MkdirAll(dst, 0o755)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
				var out *os.File
				if out, err = os.Create(dst); err == nil {
					_, err = io.Copy(out, content)
					out.Close()
				}
			}
			return err
		default:
			return fmt.Errorf("%s: unexpected entry type %c in an OCI layout archive", h.Name, h.Typeflag)
		}
	})
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// flagValues groups "-flag value" pairs by flag.
func flagValues(args []string) map[string][]string {
	m := map[string][]string{}
	for i := 0; i+1 < len(args); i += 2 {
		m[args[i]] = append(m[args[i]], args[i+1])
	}
	return m
}

func exitStderr(err error) []byte {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.Stderr
	}
	return nil
}
