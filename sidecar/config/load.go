package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"unicode/utf16"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize is the largest config file Load and Parse accept (16 MiB).
const MaxFileSize = 16 << 20

// Load reads and parses the config file at path; see Parse. It is safe to call
// concurrently.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, readError(path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, readError(path, err)
	}
	return Parse(path, data)
}

// readError reports a file that cannot be read.
func readError(path string, err error) error {
	msg := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) {
		msg = pe.Op + ": " + pe.Err.Error()
	}
	return Errors{{File: path, Msg: "cannot read config: " + msg, Err: err}}
}

// Parse parses a config file's contents; file names it in messages and in Config.File.
// It returns a defaulted, validated Config whose Version is the first 12 hex digits of the
// SHA-256 of data. On any problem it returns a nil Config and Errors listing every problem
// in the file with its line: YAML syntax, unknown keys, values of the wrong type, bad
// durations, and every semantic problem validation finds. It is safe to call
// concurrently.
//
// Parse decodes data twice: into a yaml.Node tree, which keeps every line and tells an
// absent key from an explicit zero, and into a Config with yaml.v3's strict decoder
// (KnownFields), which reports unknown keys and wrong types. Problems found afterwards
// (validation) get their line by walking the node tree along the problem's path.
func Parse(file string, data []byte) (*Config, error) {
	col := &collector{file: file, loc: &locator{}}
	if len(data) > MaxFileSize {
		col.fail(0, nil, fmt.Sprintf("file is larger than %d MiB", MaxFileSize>>20))
		return nil, col.result()
	}

	text, err := utf8Text(data)
	if err != nil {
		col.fail(1, nil, err.Error())
		return nil, col.result()
	}
	docs, first, err := documents(text)
	if err != nil {
		col.syntax(err, text)
	}
	if len(docs) == 0 {
		if err == nil {
			col.fail(1, nil, "empty config (want at least service, outbound and upstreams)")
		}
		return nil, col.result()
	}
	if len(docs) > 1 {
		col.fail(docs[1].Line, nil, "multiple YAML documents (want one)")
	}
	root := docs[0]

	var c Config
	if err := decodeStrict(text, first, &c); err != nil {
		col.decodeError(err, root)
	}
	if !col.brokenUnder(nil) {
		col.loc = newLocator(root, &c)
		applyDefaults(&c, col.loc)
		validate(&c, col)
	}
	if err := col.result(); err != nil {
		return nil, err
	}
	c.File = file
	sum := sha256.Sum256(data)
	c.Version = hex.EncodeToString(sum[:])[:12]
	return &c, nil
}

// utf8Text returns data as UTF-8. yaml.v3 reads UTF-16 when the file starts with a UTF-16
// byte order mark; Parse converts such a file first, so that it counts lines in the same
// text as yaml.v3.
func utf8Text(data []byte) ([]byte, error) {
	var order binary.ByteOrder
	switch {
	case bytes.HasPrefix(data, []byte{0xfe, 0xff}):
		order = binary.BigEndian
	case bytes.HasPrefix(data, []byte{0xff, 0xfe}):
		order = binary.LittleEndian
	default:
		return data, nil
	}
	data = data[2:]
	if len(data)%2 != 0 {
		return nil, errors.New("invalid UTF-16: odd number of bytes")
	}
	units := make([]uint16, len(data)/2)
	for i := range units {
		units[i] = order.Uint16(data[2*i:])
	}
	return []byte(string(utf16.Decode(units))), nil
}

// documents returns the top nodes of the first two non-empty YAML documents in data (a
// document holding only comments or null is empty), the position of the first among all
// documents, and the parser's error, if any.
func documents(data []byte) (docs []*yaml.Node, first int, err error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for i := 0; len(docs) < 2; i++ {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if err == io.EOF {
				err = nil
			}
			return docs, first, err
		}
		if len(doc.Content) == 0 {
			continue
		}
		top := doc.Content[0]
		if top.Kind == yaml.ScalarNode && top.ShortTag() == "!!null" {
			continue
		}
		if len(docs) == 0 {
			first = i
		}
		docs = append(docs, top)
	}
	return docs, first, nil
}

// decodeStrict decodes the document at position index of data into c, refusing unknown
// keys. Its error, if any, is a *yaml.TypeError holding every problem found, or another
// error that stopped decoding.
func decodeStrict(data []byte, index int, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	for range index {
		var skip yaml.Node
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return dec.Decode(c)
}
