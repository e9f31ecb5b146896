package install

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// testVersion is what the test stamps into the binary it builds.
const testVersion = "v0.0.0-install-test"

// builtOnce returns a function that runs build the first time a test asks
// for its result, once per test run, and gives every test the path it
// built, or fails it with the one build's error.
func builtOnce(build func() (string, error)) func(t *testing.T) string {
	result := sync.OnceValues(build)
	return func(t *testing.T) string {
		t.Helper()
		path, err := result()
		if err != nil {
			t.Fatal(err)
		}
		return path
	}
}

// imageBinary builds mailfleet with the Dockerfile's own `go build` command,
// as written there (only VERSION, the target platform and the output path
// are filled in), once per test run. The operator test runs this binary, so
// what is tested is what the image ships.
var imageBinary = builtOnce(func() (string, error) {
	build, err := dockerfileBuildCommand()
	if err != nil {
		return "", err
	}
	path := filepath.Join(workDir, "mailfleet")
	build = strings.Replace(build, "/out/mailfleet", path, 1)
	cmd := exec.Command("sh", "-c", build)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "VERSION="+testVersion, "TARGETOS="+runtime.GOOS, "TARGETARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s: %w\n%s", build, err, out)
	}
	return path, nil
})

// dockerfileBuildCommand is the shell command of the Dockerfile's RUN that
// runs `go build`, continuation lines joined and RUN's --mount options
// removed.
func dockerfileBuildCommand() (string, error) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		return "", fmt.Errorf("read Dockerfile: %w", err)
	}
	joined := strings.ReplaceAll(string(data), "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "RUN ") || !strings.Contains(line, "go build") {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, "RUN "))
		for len(fields) > 0 && strings.HasPrefix(fields[0], "--mount=") {
			fields = fields[1:]
		}
		return strings.Join(fields, " "), nil
	}
	return "", fmt.Errorf("no RUN ... go build in the Dockerfile")
}

// TestImageBinary: the Dockerfile builds a static binary (it runs on
// distroless/static, which has no libc or loader) with the version stamped,
// and the Makefile's build target uses the same flags.
func TestImageBinary(t *testing.T) {
	build, err := dockerfileBuildCommand()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`, "./cmd/mailfleet"} {
		if !strings.Contains(build, want) {
			t.Errorf("the Dockerfile's build %q lacks %s", build, want)
		}
	}
	t.Run("same flags as make build", func(t *testing.T) {
		out, err := exec.Command("make", "-s", "-n", "-C", repoRoot, "build", "VERSION="+testVersion).Output()
		if err != nil {
			t.Fatalf("make -n build: %v", err)
		}
		flags := regexp.MustCompile(`CGO_ENABLED=0 go build -trimpath -ldflags '([^']*)'`).FindStringSubmatch(string(out))
		if flags == nil || flags[1] != "-s -w -X main.version="+testVersion {
			t.Errorf("make build runs %q; want CGO_ENABLED=0 go build -trimpath -ldflags '-s -w -X main.version=<VERSION>', as the Dockerfile", out)
		}
	})

	bin := imageBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %v program header: it is dynamically linked", p.Type)
		}
	}
	if s := f.Section(".dynamic"); s != nil {
		t.Error("the binary has a .dynamic section: it is dynamically linked")
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary has a symbol table: -s was not applied")
	}

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("mailfleet version: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "mailfleet "+testVersion; got != want {
		t.Errorf("mailfleet version printed %q, want %q", got, want)
	}
	if strings.Contains(string(mustRead(t, bin)), repoRoot) {
		t.Errorf("the binary contains the build directory %s: -trimpath was not applied", repoRoot)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
