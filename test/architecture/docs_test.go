package architecture

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	testFunc = regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)[A-Z]\w*)\(`)
	testName = regexp.MustCompile("`(?:[a-z0-9/]+ )?((?:Test|Benchmark|Fuzz)[A-Z]\\w*)`")
)

// TestDocsNameRealTests: the docs cite tests as proof (docs/security.md has
// one per attack); a test that is renamed or moved away must not leave a
// citation of nothing behind.
func TestDocsNameRealTests(t *testing.T) {
	root := filepath.Join("..", "..")
	defined := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "bin" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if strings.HasSuffix(path, "_test.go") {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range testFunc.FindAllStringSubmatch(string(data), -1) {
				defined[m[1]] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	docs, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	docs = append(docs, filepath.Join(root, "README.md"))
	cited := 0
	for _, doc := range docs {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range testName.FindAllStringSubmatch(string(data), -1) {
			cited++
			if !defined[m[1]] {
				t.Errorf("%s cites %s, which no test file defines", filepath.Base(doc), m[1])
			}
		}
	}
	if cited < 20 {
		t.Fatalf("the docs cite %d tests: the citation format changed under this test", cited)
	}
}
