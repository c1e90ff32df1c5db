package invariantv1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// TestGeneratedCodeIsUpToDate regenerates the code from proto/ into a temporary
// directory and fails when it differs from the committed files.
func TestGeneratedCodeIsUpToDate(t *testing.T) {
	out := t.TempDir()
	cmd := exec.Command("go", "run", "./protogen", "-proto", "../../../proto", "-out", out)
	cmd.Dir = filepath.Join("..", "..", "tools")
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("regenerate (in clients/go/tools: go run ./protogen): %v\n%s", err, output)
	}
	generated := pbFiles(t, filepath.Join(out, "invariant", "v1"))
	committed := pbFiles(t, ".")
	if len(generated) == 0 {
		t.Fatal("the generator wrote no *.pb.go files")
	}
	var stale []string
	for _, name := range generated {
		want, err := os.ReadFile(filepath.Join(out, "invariant", "v1", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil || !bytes.Equal(got, want) {
			stale = append(stale, name)
		}
	}
	for _, name := range committed {
		if !slices.Contains(generated, name) {
			stale = append(stale, name+" (no longer generated)")
		}
	}
	if len(stale) > 0 {
		t.Fatalf("generated code is out of date: run clients/go/generate.sh (differs: %v)", stale)
	}
}

func pbFiles(t *testing.T, dir string) []string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(dir, "*.pb.go"))
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(matches))
	for i, m := range matches {
		names[i] = filepath.Base(m)
	}
	return names
}
