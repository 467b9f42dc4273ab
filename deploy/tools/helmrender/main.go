// helmrender renders a Helm 3 chart the way `helm template` does, for offline checks on machines
// without a helm binary. It uses Go's text/template with the sprig function library (Debian's
// golang-github-masterminds-sprig-dev, the library Helm itself uses) plus Helm's own functions
// (include, tpl, required, toYaml, fromYaml, toJson, fromJson, lookup) reimplemented after
// helm.sh/helm/v3/pkg/engine.
//
// Faithful to Helm: one template set holding every file under templates/ (partials included), each
// non-partial file executed with {Values, Release, Chart, Capabilities, Files, Template};
// missingkey=zero with "<no value>" removed; values coalesced like Helm (maps merged recursively, a
// null override deletes the key) after a YAML->JSON round trip (numbers become float64, as in Helm);
// empty outputs dropped; NOTES.txt rendered but not printed; "# Source:" headers.
// Not implemented: subcharts/dependencies, --set, .Files.Glob/AsConfig/AsSecrets, toToml, a live
// lookup (always an empty map, as in `helm template`), Capabilities beyond a fixed KubeVersion and
// the built-in API versions list, values.schema.json validation (done by the caller in Python).
//
// Usage: helmrender [-f values.yaml]... [--namespace NS] [--name RELEASE] [--dump-values] CHART_DIR
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

// Capabilities mirrors the fields of Helm's chartutil.Capabilities that templates use.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
}

type KubeVersion struct {
	Version, Major, Minor string
}

func (k KubeVersion) String() string     { return k.Version }
func (k KubeVersion) GitVersion() string { return k.Version }

type VersionSet []string

// Has reports whether the set contains an API version ("apps/v1") or a kind ("apps/v1/DaemonSet").
func (v VersionSet) Has(s string) bool {
	for _, x := range v {
		if x == s {
			return true
		}
	}
	return false
}

// Files gives templates the chart's non-template files, like Helm's .Files.
type Files map[string][]byte

func (f Files) Get(name string) string      { return string(f[name]) }
func (f Files) GetBytes(name string) []byte { return f[name] }
func (f Files) Lines(name string) []string {
	s := string(f[name])
	if s == "" {
		return []string{}
	}
	return strings.Split(s, "\n")
}

func main() {
	var files valueFiles
	flag.Var(&files, "f", "values file (repeatable; later files win)")
	ns := flag.String("namespace", "default", "release namespace")
	name := flag.String("name", "release-name", "release name")
	kube := flag.String("kube-version", "v1.34.0", "Capabilities.KubeVersion")
	dump := flag.Bool("dump-values", false, "print the coalesced values as JSON and exit")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: helmrender [-f values.yaml]... [--namespace NS] [--name NAME] CHART_DIR")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), files, *ns, *name, *kube, *dump)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helmrender:", err)
		os.Exit(1)
	}
	if _, err := os.Stdout.WriteString(out); err != nil {
		os.Exit(1)
	}
}

func readYAML(file string) (map[string]interface{}, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return m, nil
}

// coalesce merges src over dst the way Helm merges user values over chart defaults.
func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			dst[k] = coalesce(dm, sm)
		} else {
			dst[k] = v
		}
	}
	return dst
}

// render returns what `helm template` prints (or the coalesced values as JSON when dump is set).
func render(chart string, valueFiles []string, ns, name, kube string, dump bool) (string, error) {
	meta, err := readYAML(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	values, err := readYAML(filepath.Join(chart, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, f := range valueFiles {
		over, err := readYAML(f)
		if err != nil {
			return "", err
		}
		values = coalesce(values, over)
	}
	if dump {
		b, err := json.MarshalIndent(values, "", "  ")
		if err != nil {
			return "", err
		}
		return string(b) + "\n", nil
	}
	chartName, _ := meta["name"].(string)
	chartObj := map[string]interface{}{}
	for k, v := range meta { // Helm exposes Chart.yaml fields capitalised: .Chart.AppVersion
		chartObj[strings.ToUpper(k[:1])+k[1:]] = v
	}
	chartFiles := Files{}
	var tmplNames []string
	sources := map[string]string{}
	err = filepath.Walk(chart, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chart, p)
		rel = filepath.ToSlash(rel)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasPrefix(rel, "templates/") {
			full := path.Join(chartName, rel)
			tmplNames = append(tmplNames, full)
			sources[full] = string(b)
		} else if rel != "Chart.yaml" && rel != "values.yaml" && rel != "values.schema.json" {
			chartFiles[rel] = b
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(tmplNames)
	major, minor := "1", "34"
	if parts := strings.Split(strings.TrimPrefix(kube, "v"), "."); len(parts) >= 2 {
		major, minor = parts[0], parts[1]
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": name, "Namespace": ns, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": chartObj,
		"Capabilities": Capabilities{
			KubeVersion: KubeVersion{Version: kube, Major: major, Minor: minor},
			APIVersions: VersionSet{"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "coordination.k8s.io/v1",
				"networking.k8s.io/v1", "policy/v1", "batch/v1"},
		},
		"Files": chartFiles,
	}

	t := template.New("gotpl").Option("missingkey=zero")
	t.Funcs(funcMap(t))
	for _, n := range tmplNames {
		if _, err := t.New(n).Parse(sources[n]); err != nil {
			return "", err
		}
	}
	var out bytes.Buffer
	for _, n := range tmplNames {
		base := path.Base(n)
		if strings.HasPrefix(base, "_") {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{"Name": n, "BasePath": path.Join(chartName, "templates")}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, n, data); err != nil {
			return "", err
		}
		s := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			if os.Getenv("HELMRENDER_NOTES") != "" {
				fmt.Fprintln(os.Stderr, s)
			}
			continue
		}
		if strings.TrimSpace(s) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", n, strings.TrimSpace(s))
	}
	return out.String(), nil
}

// funcMap is sprig's text function map minus env/expandenv (as Helm removes them) plus Helm's own.
func funcMap(t *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	includeDepth := map[string]int{}
	f["toYaml"] = func(v interface{}) string {
		b, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(b), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["toJson"] = func(v interface{}) string {
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		if includeDepth[name] > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		includeDepth[name]++
		defer func() { includeDepth[name]-- }()
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		c, err := t.Clone()
		if err != nil {
			return "", err
		}
		if _, err := c.New("tpl").Parse(text); err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := c.ExecuteTemplate(&buf, "tpl", data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return f
}
