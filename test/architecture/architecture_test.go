// Package architecture checks the rules of docs/architecture.md ("Rules")
// against what the packages really import, so that a dependency pointing the
// wrong way fails a test rather than waiting for a reviewer to notice.
package architecture

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/mailfleet/mailfleet"

// rule forbids the packages it applies to (and what they import, however
// deeply) from depending on what it forbids.
type rule struct {
	name    string
	applies func(pkg string) bool
	forbids func(dep string) bool
}

// rules is the list docs/architecture.md gives, in its words.
var rules = []rule{
	{
		name:    "the contract (api/wire) depends on the standard library only",
		applies: is("api/wire"),
		forbids: func(dep string) bool { return !isStd(dep) },
	},
	{
		name:    "api/ depends on neither relay/ nor controllers/",
		applies: under("api"),
		forbids: anyOf(under("relay"), under("controllers"), under("ratelimit")),
	},
	{
		name: "relay/ depends on nothing of Kubernetes and not on the operator; " +
			"relay/credentials/kubesource, the relay's watch of its shards, is the one package allowed client-go",
		applies: func(p string) bool { return under("relay")(p) && !is("relay/credentials/kubesource")(p) },
		forbids: anyOf(kubernetes, under("controllers"), under("api/v1alpha1"), under("ratelimit")),
	},
	{
		name:    "the SMTP protocol engine (relay/smtpd) and client (relay/smtpclient) depend on no other mailfleet package",
		applies: anyOf(under("relay/smtpd"), under("relay/smtpclient")),
		forbids: func(dep string) bool { return strings.HasPrefix(dep, module+"/") },
	},
	{
		name:    "no package reaches back up to cmd/",
		applies: func(p string) bool { return !under("cmd")(p) },
		forbids: under("cmd"),
	},
	{
		name:    "the rate-limit sidecar (ratelimit/) knows nothing of the operator",
		applies: under("ratelimit"),
		forbids: anyOf(under("controllers"), under("api/v1alpha1")),
	},
	{
		name:    "the renderers (controllers/render) are pure: no API client, nothing of the reconcilers",
		applies: under("controllers/render"),
		forbids: func(dep string) bool {
			return strings.HasPrefix(dep, "k8s.io/client-go") || strings.HasPrefix(dep, "sigs.k8s.io/controller-runtime/pkg/client") ||
				dep == module+"/controllers"
		},
	},
	{
		name:    "the operator does not run relay code: controllers/ imports relay/ only for its config format",
		applies: under("controllers"),
		forbids: func(dep string) bool { return under("relay")(dep) && !is("relay/config")(dep) },
	},
	{
		name:    "nothing but cmd/, hack/ and test/ imports the ratelimit server",
		applies: func(p string) bool { return !anyOf(under("cmd"), under("hack"), under("test"), under("ratelimit"))(p) },
		forbids: under("ratelimit"),
	},
}

// pkg is the part of `go list -json` these rules read.
type pkg struct {
	ImportPath string
	Standard   bool
	Deps       []string
}

func TestDependencyRules(t *testing.T) {
	pkgs := listPackages(t)
	std := map[string]bool{}
	for _, p := range pkgs {
		if p.Standard {
			std[p.ImportPath] = true
		}
	}
	stdPackages = std
	checked := 0
	for _, r := range rules {
		for _, p := range pkgs {
			if !strings.HasPrefix(p.ImportPath, module) || !r.applies(p.ImportPath) {
				continue
			}
			checked++
			for _, d := range p.Deps {
				if r.forbids(d) {
					t.Errorf("%s: %s depends on %s", r.name, rel(p.ImportPath), rel(d))
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("the rules applied to %d packages: the module path or the layout changed under them", checked)
	}
}

// TestRulesCatchAViolation keeps the rules honest: each one forbids
// something it is meant to.
func TestRulesCatchAViolation(t *testing.T) {
	stdPackages = map[string]bool{"fmt": true}
	cases := map[string][2]string{
		rules[0].name: {"api/wire", "k8s.io/api/core/v1"},
		rules[1].name: {"api/v1alpha1", module + "/relay/config"},
		rules[2].name: {"relay/smtpd", "k8s.io/client-go/kubernetes"},
		rules[3].name: {"relay/smtpd", module + "/relay/credentials"},
		rules[4].name: {"controllers", module + "/cmd/mailfleet"},
		rules[5].name: {"ratelimit", module + "/controllers"},
		rules[6].name: {"controllers/render", "sigs.k8s.io/controller-runtime/pkg/client"},
		rules[7].name: {"controllers", module + "/relay/smtpd"},
		rules[8].name: {"relay/smtpd", module + "/ratelimit"},
	}
	for _, r := range rules {
		c, ok := cases[r.name]
		if !ok {
			t.Errorf("rule %q has no case here", r.name)
			continue
		}
		if !r.applies(module+"/"+c[0]) || !r.forbids(c[1]) {
			t.Errorf("rule %q lets %s depend on %s", r.name, c[0], c[1])
		}
	}
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard,Deps", "./...")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Fatalf("go list: %v\n%s", err, exit.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			return pkgs
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
}

// stdPackages are the standard library's packages, as go list reports them.
var stdPackages map[string]bool

func isStd(dep string) bool { return stdPackages[dep] }

func kubernetes(dep string) bool {
	return strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "sigs.k8s.io/controller-runtime")
}

func is(path string) func(string) bool {
	return func(p string) bool { return p == module+"/"+path }
}

func under(dir string) func(string) bool {
	return func(p string) bool { return p == module+"/"+dir || strings.HasPrefix(p, module+"/"+dir+"/") }
}

func anyOf(fs ...func(string) bool) func(string) bool {
	return func(p string) bool {
		return slices.ContainsFunc(fs, func(f func(string) bool) bool { return f(p) })
	}
}

func rel(p string) string { return strings.TrimPrefix(p, module+"/") }
