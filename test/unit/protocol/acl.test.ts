import { expect } from 'chai';
import { cellAclRules, controlAclRules, escapeAclGlob, keyLayout, routerAclRules } from '../../../protocol';

describe('acl', () => {
  describe('routerAclRules', () => {
    it('follows the key prefix, read-only on the table, heartbeats in a selector', () => {
      const rules = routerAclRules('tenant-a:').rules;
      expect(rules).to.include('%R~tenant-a:rg:{*}:routes');
      expect(rules).to.include('%R~tenant-a:rg:{*}:version');
      expect(rules).to.include('(+set +del +pexpire ~tenant-a:rg:{*}:routers:*)');
      expect(rules.join(' ')).to.not.match(/\+hset|\+incr|\+publish|\+eval/);
      expect(rules.join(' ')).to.not.include('sf:');
    });
  });

  describe('cellAclRules', () => {
    it("names the cell's own keys from the layout and reads its desired hash only", () => {
      const own = keyLayout('p:').cell('c1');
      const text = cellAclRules('c1', 'p:').rules.join(' ');
      expect(text).to.include(`%R~${own.desired})`);
      expect(text).to.include(`~${own.actual})`);
      expect(text).to.include(`&${own.notify})`);
      expect(text).to.not.include('~p:tokens');
    });

    it('refuses a cell name that is not one', () => {
      expect(() => cellAclRules('c 1')).to.throw(/not a valid cell name/);
    });
  });

  describe('controlAclRules', () => {
    it('escapes glob characters of the prefix and refuses one the ACL file cannot hold', () => {
      expect(controlAclRules('a*b?[c]:').rules).to.include('~a\\*b\\?\\[c\\]:*');
      expect(() => controlAclRules('has space:')).to.throw(/cannot be written into Redis ACL rules/);
    });
  });

  describe('escapeAclGlob', () => {
    it('escapes *, ?, [, ] and backslash only', () => {
      expect(escapeAclGlob('sf:{g}:\\*?[]')).to.equal('sf:{g}:\\\\\\*\\?\\[\\]');
    });
  });
});
