import { expect } from 'chai';
import { moduleLogLevel } from '../../../common/logger';

describe('logger', function () {
  describe('moduleLogLevel', function () {
    it('takes the most specific SF_LOG entry for a module', function () {
      const env = { SF_LOG: 'cell:debug,router:info,*:warn,router:relay:trace' };
      expect(moduleLogLevel('cell', env)).to.equal('debug');
      expect(moduleLogLevel('router', env)).to.equal('info');
      expect(moduleLogLevel('router:relay', env)).to.equal('trace');
      expect(moduleLogLevel('router:source', env)).to.equal('info');
      expect(moduleLogLevel('control', env)).to.equal('warn');
    });

    it('falls back to SF_LOG_LEVEL, then info, and ignores unknown levels', function () {
      expect(moduleLogLevel('control', { SF_LOG: 'control:loud', SF_LOG_LEVEL: 'error' })).to.equal('error');
      expect(moduleLogLevel('control', {})).to.equal('info');
      expect(moduleLogLevel('cell', { SF_LOG: 'cellar:debug' })).to.equal('info');
    });
  });
});
