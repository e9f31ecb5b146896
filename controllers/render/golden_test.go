package render

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden from what the renderers make now")

// goldenInput is a case's input.yaml: a relay and the operator's options
// for the relay's objects, plus an account, its labels and its key for its
// credentials Secret.
type goldenInput struct {
	Options  Options         `json:"options"`
	Relay    *v1.SmtpRelay   `json:"relay"`
	Account  *v1.SmtpAccount `json:"account,omitempty"`
	LabelIDs []string        `json:"labelIDs,omitempty"`
	Key      goldenKeyState  `json:"key,omitempty"`
	// Shard, when set, renders the relay's credentials shard of these
	// accounts instead of the relay's objects.
	Shard *goldenShard `json:"shard,omitempty"`
}

// goldenShard is one shard's accounts, each with the digests of its keys and
// its active labels.
type goldenShard struct {
	Number   int `json:"number"`
	Accounts []struct {
		Account v1.SmtpAccount `json:"account"`
		Digests []string       `json:"digests"`
		Labels  []wire.Label   `json:"labels"`
	} `json:"accounts"`
}

// goldenKeyState is KeyState as input.yaml spells it.
type goldenKeyState struct {
	Key            string `json:"key"`
	IssuedAt       string `json:"issuedAt"`
	PreviousDigest string `json:"previousDigest"`
	PreviousExpiry string `json:"previousExpiry"`
	RotateHandled  string `json:"rotateHandled"`
}

// TestGolden renders each case under testdata/golden and compares every
// object with <kind>-<name>.yaml beside the input, so a reader sees what a
// spec becomes without running anything. `go test ./controllers/render
// -update` rewrites the files; the diff is then the change to review.
func TestGolden(t *testing.T) {
	cases, err := filepath.Glob(filepath.Join("testdata", "golden", "*", "input.yaml"))
	if err != nil || len(cases) == 0 {
		t.Fatalf("no golden cases: %v", err)
	}
	for _, input := range cases {
		dir := filepath.Dir(input)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			got := renderCase(t, input)
			checkGolden(t, dir, got)
		})
	}
}

// renderCase renders a case's objects as YAML, by file name.
func renderCase(t *testing.T, input string) map[string][]byte {
	t.Helper()
	data, err := os.ReadFile(input)
	if err != nil {
		t.Fatal(err)
	}
	var in goldenInput
	if err := yaml.UnmarshalStrict(data, &in); err != nil {
		t.Fatalf("%s: %v", input, err)
	}
	var objs []Object
	switch {
	case in.Shard != nil:
		objs = append(objs, shardOf(t, in.Relay, in.Shard))
	case in.Account != nil:
		objs = append(objs, CredentialsSecret(CredentialsInput{Account: in.Account, Relay: in.Relay, LabelIDs: in.LabelIDs, Key: in.Key.state()}))
	default:
		rendered, err := Relay(in.Relay, in.Options)
		if err != nil {
			t.Fatalf("render: %v", err)
		}
		objs = rendered.List()
	}
	out := map[string][]byte{}
	for _, o := range objs {
		y, err := yaml.Marshal(readable(o))
		if err != nil {
			t.Fatal(err)
		}
		out[strings.ToLower(reflect.TypeOf(o).Elem().Name())+"-"+o.GetName()+".yaml"] = y
	}
	return out
}

func shardOf(t *testing.T, relay *v1.SmtpRelay, in *goldenShard) Object {
	t.Helper()
	var accounts []wire.Account
	for _, a := range in.Accounts {
		accounts = append(accounts, ShardEntry(&a.Account, relay, a.Digests, a.Labels))
	}
	data, err := wire.MarshalShard(accounts)
	if err != nil {
		t.Fatal(err)
	}
	return ShardSecret(relay, in.Number, data, len(accounts))
}

// readable shows a Secret's data as text, which is what a reviewer of a
// golden file needs to read; the renderer writes the same bytes as Data.
func readable(o Object) Object {
	s, ok := o.(*corev1.Secret)
	if !ok {
		return o
	}
	s = s.DeepCopy()
	s.StringData = map[string]string{}
	for k, v := range s.Data {
		s.StringData[k] = string(v)
	}
	s.Data = nil
	return s
}

func (k goldenKeyState) state() KeyState {
	return KeyState{Key: k.Key, IssuedAt: ParseTime(k.IssuedAt), PreviousDigest: k.PreviousDigest,
		PreviousExpiry: ParseTime(k.PreviousExpiry), RotateHandled: k.RotateHandled}
}

// checkGolden compares got with the files in dir, or rewrites them with
// -update. A golden file no object matches any more is an error too.
func checkGolden(t *testing.T, dir string, got map[string][]byte) {
	t.Helper()
	existing, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, path := range existing {
		name := filepath.Base(path)
		if _, ok := got[name]; !ok && name != "input.yaml" {
			if *update {
				os.Remove(path)
				continue
			}
			t.Errorf("%s: no object renders to it any more (run with -update)", path)
		}
	}
	names := make([]string, 0, len(got))
	for name := range got {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		path := filepath.Join(dir, name)
		if *update {
			if err := os.WriteFile(path, got[name], 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: %v (run with -update to create it)", path, err)
			continue
		}
		if string(want) != string(got[name]) {
			t.Errorf("%s differs from what the renderer makes (run with -update and review the diff):\n%s", path, lineDiff(string(want), string(got[name])))
		}
	}
}

// lineDiff shows the lines of want and got that differ, enough to see what
// changed without a diff library.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := range max(len(w), len(g)) {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl + "\n")
		}
	}
	return b.String()
}
