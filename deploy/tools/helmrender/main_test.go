package main

// Helm behaviours the chart relies on, each checked against the output Helm documents for it
// (helm.sh/helm/v3/pkg/engine and pkg/chartutil behaviour): missing values render empty, partials
// are shared and not printed, include/tpl/required, toYaml's trimmed newline, value coalescing
// (nested merge, null deletes a default), numbers from YAML printed as Helm prints them, .Files.Get,
// NOTES.txt not printed, empty documents dropped.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeChart(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func baseChart(templates map[string]string) map[string]string {
	files := map[string]string{
		"Chart.yaml":  "apiVersion: v2\nname: demo\nversion: 1.2.3\nappVersion: \"4.5\"\n",
		"values.yaml": "port: 8080\nratio: 0.5\nnested:\n  keep: a\n  drop: b\nlist: [x, z]\nempty: \"\"\n",
		"files/a.txt": "line1\nline2\n",
	}
	for k, v := range templates {
		files["templates/"+k] = v
	}
	return files
}

func renderWith(t *testing.T, templates map[string]string, override string) (string, error) {
	t.Helper()
	dir := writeChart(t, baseChart(templates))
	var vf []string
	if override != "" {
		p := filepath.Join(t.TempDir(), "over.yaml")
		if err := os.WriteFile(p, []byte(override), 0o644); err != nil {
			t.Fatal(err)
		}
		vf = append(vf, p)
	}
	return render(dir, vf, "ns1", "rel", "v1.30.0", false)
}

func TestRenderHelmSemantics(t *testing.T) {
	cases := []struct {
		name, tpl, override, want string
	}{
		{"missing value is empty", `a{{ .Values.nothing }}b`, "", "ab"},
		{"missing nested value is empty", `a{{ .Values.nested.nothing }}b`, "", "ab"},
		{"number printed as Helm does", `{{ .Values.port }} {{ .Values.ratio }}`, "", "8080 0.5"},
		{"release and chart", `{{ .Release.Name }} {{ .Release.Namespace }} {{ .Chart.Name }} {{ .Chart.AppVersion }} {{ .Release.Service }}`, "", "rel ns1 demo 4.5 Helm"},
		{"include a partial", `{{ include "demo.x" . | upper }}`, "", "REL-DEMO"},
		{"tpl sees templates and values", `{{ tpl "{{ .Values.port }}-{{ include \"demo.x\" . }}" . }}`, "", "8080-rel-demo"},
		{"toYaml trims the newline", `{{ toYaml .Values.nested }}|`, "", "drop: b\nkeep: a|"},
		{"nindent", `x:{{ toYaml .Values.list | nindent 2 }}`, "", "x:\n  - x\n  - z"},
		{"coalesce merges maps", `{{ .Values.nested.keep }}{{ .Values.nested.drop }}{{ .Values.nested.add }}`, "nested:\n  add: c\n", "abc"},
		{"null deletes a default", `{{ hasKey .Values.nested "drop" }}`, "nested:\n  drop: null\n", "false"},
		{"lists are replaced", `{{ join "," .Values.list }}`, "list: [z]\n", "z"},
		{"Files.Get", `{{ .Files.Get "files/a.txt" | trim }}`, "", "line1\nline2"},
		{"env is removed", `{{ if hasKey . "Values" }}ok{{ end }}`, "", "ok"},
		{"toJson", `{{ toJson .Values.nested }}`, "", `{"drop":"b","keep":"a"}`},
		{"sprig functions", `{{ "a-b" | replace "-" "_" | quote }} {{ sha256sum "x" | trunc 8 }}`, "", `"a_b" 2d711642`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := renderWith(t, map[string]string{
				"_helpers.tpl": `{{- define "demo.x" -}}{{ .Release.Name }}-{{ .Chart.Name }}{{- end }}`,
				"t.yaml":       c.tpl,
			}, c.override)
			if err != nil {
				t.Fatal(err)
			}
			want := "---\n# Source: demo/templates/t.yaml\n" + c.want + "\n"
			if out != want {
				t.Errorf("got %q, want %q", out, want)
			}
		})
	}
}

func TestRenderErrorsAndSkips(t *testing.T) {
	if _, err := renderWith(t, map[string]string{"t.yaml": `{{ required "need foo" .Values.foo }}`}, ""); err == nil || !strings.Contains(err.Error(), "need foo") {
		t.Errorf("required on a missing value: err = %v", err)
	}
	if _, err := renderWith(t, map[string]string{"t.yaml": `{{ required "need empty" .Values.empty }}`}, ""); err == nil {
		t.Error("required on an empty string did not fail")
	}
	if _, err := renderWith(t, map[string]string{"t.yaml": `{{ fail "boom" }}`}, ""); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("fail: err = %v", err)
	}
	if _, err := renderWith(t, map[string]string{"t.yaml": `{{ env "HOME" }}`}, ""); err == nil {
		t.Error("env is available; Helm removes it")
	}
	out, err := renderWith(t, map[string]string{
		"NOTES.txt":  "notes {{ .Release.Name }}",
		"empty.yaml": "{{- if false }}x{{ end }}\n  \n",
		"_p.tpl":     "partial text",
		"t.yaml":     "kept",
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	if out != "---\n# Source: demo/templates/t.yaml\nkept\n" {
		t.Errorf("NOTES, empty output or partial printed: %q", out)
	}
}
