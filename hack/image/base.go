package main

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// The accounts of distroless/static:nonroot, the Dockerfile's final base:
// root, nonroot (65532, the USER of every mailfleet.test image that runs Go)
// and nobody. The shells are /sbin/nologin, which does not exist: nobody logs
// in to these images.
var staticAccounts = []account{
	{name: "root", uid: 0, gid: 0, home: "/root"},
	{name: "nobody", uid: 65534, gid: 65534, home: "/nonexistent"},
	{name: "nonroot", uid: 65532, gid: 65532, home: "/home/nonroot"},
}

type account struct {
	name     string
	uid, gid int
	home     string
}

func parseAccount(s string) (account, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 && len(parts) != 4 {
		return account{}, fmt.Errorf("-account %q: want NAME:UID:GID[:HOME]", s)
	}
	a := account{name: parts[0], home: "/nonexistent"}
	var err1, err2 error
	a.uid, err1 = strconv.Atoi(parts[1])
	a.gid, err2 = strconv.Atoi(parts[2])
	if a.name == "" || err1 != nil || err2 != nil || a.uid < 0 || a.gid < 0 {
		return account{}, fmt.Errorf("-account %q: want NAME:UID:GID[:HOME] with numeric ids", s)
	}
	if len(parts) == 4 && parts[3] != "" {
		a.home = parts[3]
	}
	return a, nil
}

// staticBase is the content distroless/static:nonroot gives a static Go
// binary, from this machine's Debian packages: the accounts, Debian's CA
// bundle (ca-certificates), Debian's time zone database (tzdata), /tmp, the
// nonroot home, and name-service settings Go's resolver reads. No shell, no
// libc, no package manager.
func staticBase(o *options) (tree, error) {
	t := tree{}
	accounts := append([]account(nil), staticAccounts...)
	for _, s := range o.accounts {
		a, err := parseAccount(s)
		if err != nil {
			return nil, err
		}
		accounts = append(accounts, a)
	}
	var passwd, group strings.Builder
	groups := map[int]bool{}
	for _, a := range accounts {
		fmt.Fprintf(&passwd, "%s:x:%d:%d:%s:%s:/sbin/nologin\n", a.name, a.uid, a.gid, a.name, a.home)
		if !groups[a.gid] {
			groups[a.gid] = true
			fmt.Fprintf(&group, "%s:x:%d:\n", a.name, a.gid)
		}
	}
	files := []struct {
		path string
		data string
	}{
		{"etc/passwd", passwd.String()},
		{"etc/group", group.String()},
		// Go's resolver reads the hosts line: /etc/hosts first, then DNS.
		{"etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"},
		{"etc/os-release", "NAME=\"mailfleet static\"\nID=mailfleet-static\n" +
			"PRETTY_NAME=\"mailfleet static base (Debian ca-certificates and tzdata, no shell)\"\n"},
	}
	for _, f := range files {
		if err := t.add(f.path, &entry{typ: typeReg, mode: 0o644, data: []byte(f.data)}); err != nil {
			return nil, err
		}
	}

	ca, err := os.ReadFile(o.caCerts)
	if err != nil {
		return nil, fmt.Errorf("-base static needs a CA bundle (apt-get install ca-certificates): %w", err)
	}
	if err := t.add("etc/ssl/certs/ca-certificates.crt", &entry{typ: typeReg, mode: 0o644, data: ca}); err != nil {
		return nil, err
	}

	dirs := []struct {
		path     string
		mode     int64
		uid, gid int
	}{
		{"tmp", 0o1777, 0, 0},
		{"root", 0o700, 0, 0},
		{"home", 0o755, 0, 0},
		{"home/nonroot", 0o700, 65532, 65532},
	}
	for _, a := range accounts[len(staticAccounts):] {
		if a.home != "/nonexistent" && a.home != "/" {
			dirs = append(dirs, struct {
				path     string
				mode     int64
				uid, gid int
			}{strings.TrimPrefix(path.Clean(a.home), "/"), 0o700, a.uid, a.gid})
		}
	}
	for _, d := range dirs {
		if err := t.add(d.path, &entry{typ: typeDir, mode: d.mode, uid: d.uid, gid: d.gid}); err != nil {
			return nil, err
		}
	}

	if err := addZoneinfo(t, o.zoneinfo); err != nil {
		return nil, fmt.Errorf("-base static needs the time zone database (apt-get install tzdata): %w", err)
	}
	return t, nil
}

// addZoneinfo copies the time zone database to /usr/share/zoneinfo, where
// Go's time package looks first. Relative links (posix/ -> ../, aliases)
// stay links; absolute ones (localtime -> /etc/localtime) point at this
// machine, not the image, and are left out.
func addZoneinfo(t tree, root string) error {
	if _, err := os.Stat(filepath.Join(root, "UTC")); err != nil {
		return err
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		dst := path.Join("usr/share/zoneinfo", filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			return t.add(dst, &entry{typ: typeDir, mode: 0o755})
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if filepath.IsAbs(target) {
				return nil
			}
			return t.add(dst, &entry{typ: typeSymlink, mode: 0o777, linkname: target})
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return t.add(dst, &entry{typ: typeReg, mode: 0o644, data: data})
		}
		return nil
	})
}
