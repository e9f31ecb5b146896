package architecture

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeLayout holds README's layout table to the tree: every path it
// names exists, and every Go package shipped or tested is described by a
// row for it or for a folder above it.
func TestReadmeLayout(t *testing.T) {
	root := filepath.Join("..", "..")
	rows := layoutRows(t, filepath.Join(root, "README.md"))
	for _, row := range rows {
		if _, err := os.Stat(filepath.Join(root, row)); err != nil {
			t.Errorf("README's layout names %s, which is not in the tree", row)
		}
	}
	for _, p := range listPackages(t) {
		if !strings.HasPrefix(p.ImportPath, module+"/") {
			continue
		}
		dir := rel(p.ImportPath)
		if !described(dir, rows) {
			t.Errorf("package %s has no row in README's layout (nor a folder above it)", dir)
		}
	}
}

var layoutCell = regexp.MustCompile("^\\| `([^`]+)` \\|")

// layoutRows reads the first column of the table under "## Layout".
func layoutRows(t *testing.T, readme string) []string {
	t.Helper()
	data, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Layout\n")
	if !ok {
		t.Fatal("README has no ## Layout section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var rows []string
	for _, line := range strings.Split(section, "\n") {
		if m := layoutCell.FindStringSubmatch(line); m != nil {
			rows = append(rows, strings.TrimSuffix(m[1], "/"))
		}
	}
	if len(rows) < 10 {
		t.Fatalf("README's layout table has %d rows: the format changed under this test", len(rows))
	}
	return rows
}

func described(dir string, rows []string) bool {
	for _, row := range rows {
		if dir == row || strings.HasPrefix(dir, row+"/") {
			return true
		}
	}
	return false
}
